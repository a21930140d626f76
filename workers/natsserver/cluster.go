package natsserver

import (
	"fmt"
	"net"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster makes a server one node of a JetStream cluster: it listens for routes from the other
// nodes on Port and connects to those in Routes (nats-route://host:port). Every node needs its
// own Options.Name and StoreDir. It is how the cluster test runs Tally on a clustered NATS, as a
// production install does (the official chart with cluster.enabled and three replicas).
type Cluster struct {
	Name   string
	Port   int
	Routes []string
}

// StartCluster runs n servers in this process on loopback as one JetStream cluster, each storing
// under storeDir/<its name> and fsyncing every write when syncAlways is set: what the bench
// measures replicated streams on. Clients may connect to any node; a stream with Replicas up to n
// can be created once the cluster has elected its meta leader, a few seconds after StartCluster
// returns. The test that kills a node runs its nodes as processes instead (test/cluster).
func StartCluster(n int, storeDir string, syncAlways bool) ([]*server.Server, error) {
	routePorts := make([]int, n)
	routes := make([]string, n)
	for i := range n {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		routePorts[i], routes[i] = port, fmt.Sprintf("nats-route://127.0.0.1:%d", port)
	}
	var nodes []*server.Server
	for i := range n {
		name := fmt.Sprintf("tally-%d", i)
		ns, err := Start(Options{Name: name, StoreDir: filepath.Join(storeDir, name), SyncAlways: syncAlways,
			Cluster: &Cluster{Name: "tally", Port: routePorts[i], Routes: routes}})
		if err != nil {
			for _, started := range nodes {
				started.Shutdown()
			}
			return nil, err
		}
		nodes = append(nodes, ns)
	}
	return nodes, nil
}

// freePort is a loopback TCP port nothing listened on a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
