package stream

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsserver"
)

func TestStream(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Stream Suite")
}

var (
	nc *nats.Conn
	js jetstream.JetStream
)

var _ = BeforeSuite(func() {
	ns, err := natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir()})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(ns.Shutdown)
	nc, err = nats.Connect(ns.ClientURL())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
})
