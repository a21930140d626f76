package stream

import (
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsserver"
)

var _ = Describe("Connect", func() {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	It("connects with the given name", func(ctx SpecContext) {
		c, err := Connect(nc.ConnectedUrl(), "", "tally-test", quiet)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(c.Close)
		Expect(c.IsConnected()).To(BeTrue())
		Expect(c.Opts.Name).To(Equal("tally-test"))
	})

	It("starts while NATS is down and connects once it is up", func(ctx SpecContext) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		port := l.Addr().(*net.TCPAddr).Port
		Expect(l.Close()).To(Succeed())

		c, err := Connect("nats://"+l.Addr().String(), "", "tally-test", quiet)
		Expect(err).NotTo(HaveOccurred(), "a process must start even while NATS is down")
		DeferCleanup(c.Close)
		Expect(c.IsConnected()).To(BeFalse())

		ns, err := natsserver.Start(natsserver.Options{Port: port, StoreDir: GinkgoT().TempDir()})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(ns.Shutdown)
		Eventually(c.IsConnected).WithTimeout(30 * time.Second).Should(BeTrue())
	})

	It("lets extra options win", func() {
		c, err := Connect(nc.ConnectedUrl(), "", "tally-test", quiet, nats.Name("overridden"))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(c.Close)
		Expect(c.Opts.Name).To(Equal("overridden"))
	})

	It("refuses a missing credentials file", func() {
		_, err := Connect(nc.ConnectedUrl(), GinkgoT().TempDir()+"/missing.creds", "tally-test", quiet)
		Expect(err).To(HaveOccurred())
	})
})
