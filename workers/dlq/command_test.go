package dlq

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/stream"
)

func TestDLQ(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "DLQ Suite")
}

var _ = Describe("tally dlq", func() {
	var (
		natsURL string
		js      jetstream.JetStream
		src     = stream.Source{Namespace: "shop", Name: "web"}
	)
	BeforeEach(func(ctx SpecContext) {
		ns, err := natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir()})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(ns.Shutdown)
		natsURL = ns.ClientURL()
		nc, err := nats.Connect(natsURL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(nc.Close)
		js, err = jetstream.New(nc)
		Expect(err).NotTo(HaveOccurred())
		Expect(stream.Ensure(ctx, js, src, stream.Settings{})).To(Succeed())
	})

	run := func(ctx context.Context, args ...string) (string, error) {
		var out bytes.Buffer
		cmd := NewCommand()
		cmd.SetArgs(args)
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}

	// deadLetter stores a dead letter the way a worker does: the original message, taken from the
	// source's stream, with its reason.
	deadLetter := func(ctx context.Context, data string) {
		_, err := js.Publish(ctx, src.Subject("identify"), []byte(data))
		Expect(err).NotTo(HaveOccurred())
		c, err := js.Consumer(ctx, src.StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		Expect(err).NotTo(HaveOccurred())
		_, err = js.PublishMsg(ctx, stream.NewDeadLetter(src, "shop-tenant", msg, errorString("ERROR: unsupported Unicode escape sequence (SQLSTATE 22P05)")))
		Expect(err).NotTo(HaveOccurred())
		Expect(msg.Ack()).To(Succeed())
	}

	It("lists dead letters with their reasons and re-drives them all to the source's stream", func(ctx SpecContext) {
		deadLetter(ctx, `{"type":"identify","userId":"u1"}`)

		out, err := run(ctx, "list", "--nats-url", natsURL, "--source", src.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("1 dead letter(s) of " + src.String()))
		Expect(out).To(ContainSubstring("22P05"))
		Expect(out).To(ContainSubstring(src.Subject("identify")))
		Expect(out).To(ContainSubstring(`{"type":"identify","userId":"u1"}`))

		out, err = run(ctx, "redrive", "--nats-url", natsURL, "--source", src.String(), "--all")
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("re-driven 1 of 1 dead letter(s) of " + src.String()))
		Expect(stream.ListDeadLetters(ctx, js, src)).To(BeEmpty())
		messages, deadLetters, err := stream.Undelivered(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(messages).To(Equal(uint64(1)), "the message waits in the source's stream again")
		Expect(deadLetters).To(BeZero())
	})

	It("shows progress while re-driving a large backlog", func(ctx SpecContext) {
		for i := range 30 {
			deadLetter(ctx, fmt.Sprintf(`{"type":"identify","userId":"u%d"}`, i))
		}
		var stdout, stderr bytes.Buffer
		cmd := NewCommand()
		cmd.SetArgs([]string{"redrive", "--nats-url", natsURL, "--source", src.String(), "--all"})
		cmd.SetOut(&stdout)
		cmd.SetErr(&stderr)
		Expect(cmd.ExecuteContext(ctx)).To(Succeed())
		Expect(strings.Split(strings.TrimSpace(stderr.String()), "\n")).To(Equal([]string{
			"re-driving: 3 of 30 (10%)", "re-driving: 6 of 30 (20%)", "re-driving: 9 of 30 (30%)",
			"re-driving: 12 of 30 (40%)", "re-driving: 15 of 30 (50%)", "re-driving: 18 of 30 (60%)",
			"re-driving: 21 of 30 (70%)", "re-driving: 24 of 30 (80%)", "re-driving: 27 of 30 (90%)",
		}))
		Expect(stdout.String()).To(Equal("re-driven 30 of 30 dead letter(s) of " + src.String() + "\n"))
		Expect(stream.ListDeadLetters(ctx, js, src)).To(BeEmpty())
	})

	It("re-drives single sequences and refuses unclear or wrong arguments", func(ctx SpecContext) {
		deadLetter(ctx, `{"type":"identify","userId":"u1"}`)
		deadLetter(ctx, `{"type":"identify","userId":"u2"}`)
		letters, err := stream.ListDeadLetters(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(letters).To(HaveLen(2))

		_, err = run(ctx, "redrive", "--nats-url", natsURL, "--source", src.String(), "--seq", "2")
		Expect(err).NotTo(HaveOccurred())
		Expect(stream.ListDeadLetters(ctx, js, src)).To(ConsistOf(HaveField("Data", []byte(`{"type":"identify","userId":"u1"}`))))

		_, err = run(ctx, "redrive", "--nats-url", natsURL, "--source", src.String())
		Expect(err).To(MatchError(ContainSubstring("--all or --seq")))
		_, err = run(ctx, "list", "--nats-url", natsURL, "--source", "no-slash")
		Expect(err).To(MatchError(ContainSubstring("namespace/name")))
	})
})

type errorString string

func (e errorString) Error() string { return string(e) }
