//go:build scale

// Package cluster proves Tally on a clustered NATS: three NATS server processes on loopback as one
// JetStream cluster, a source with R3 streams, receivers and a worker on different nodes, and
// the stream leader's node killed under load. It takes minutes (the worker's unacknowledged
// batch comes again after the consumer's AckWait), so it runs in make test-scale (build tag
// scale).
package cluster

import (
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

func TestCluster(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "NATS cluster")
}
