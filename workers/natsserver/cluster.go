package natsserver

// Cluster makes a server one node of a JetStream cluster: it listens for routes from the other
// nodes on Port and connects to those in Routes (nats-route://host:port). Every node needs its
// own Options.Name and StoreDir. It is how the cluster test runs Tally on a clustered NATS, as a
// production install does (the official chart with cluster.enabled and three replicas).
type Cluster struct {
	Name   string
	Port   int
	Routes []string
}
