package source

import "time"

// Defaults of the receiver's and the worker's settings. This is their one home: the commands'
// flags, tally local, the bench and the operator (which leaves a flag out when the
// SegmentSource does not set it) all read them from here, so none can drift from the others.
const (
	// DefaultBatchSize is how many messages a worker fetches and commits in one transaction.
	// Larger batches write each busy user and account row once for more messages and spread a
	// commit over more of them; at low rates messages wait an eighth of DefaultMaxWait at most.
	DefaultBatchSize = 2000
	// DefaultMaxWait is how long a worker's pull stays open to fill a batch; the messages it has
	// are handed over once they are an eighth of it old and their arrivals pause.
	DefaultMaxWait = 200 * time.Millisecond
	// DefaultPublishTimeout bounds how long a receiver's request waits for JetStream's PubAcks
	// before it answers 503.
	DefaultPublishTimeout = 5 * time.Second
	// DefaultShutdownDelay is how long a stopping receiver keeps serving while unready: long
	// enough for the endpoints controller, kube-proxy and load balancers to stop sending it
	// traffic.
	DefaultShutdownDelay = 5 * time.Second
	// DefaultInsightsEndpoint is Segment's public Tracking API, where insights go unless a
	// SegmentSource names another endpoint.
	DefaultInsightsEndpoint = "https://api.segment.io"
	// DefaultInsightsInterval is the time between two insight pushes.
	DefaultInsightsInterval = time.Hour
)
