package stream

import (
	"bytes"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("A source's share of the JetStream store", func() {
	It("bounds both streams by bytes and refuses, never drops, once the message stream is full", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{MaxBytes: 64 << 10, Tenant: "small"})).To(Succeed())
		info := streamInfo(ctx, src.StreamName())
		Expect(info.Config.MaxBytes).To(Equal(int64(64 << 10)))
		Expect(info.Config.MaxMsgSize).To(Equal(int32(MaxMessageBytes)))
		dlq := streamInfo(ctx, src.DeadLetterStreamName())
		Expect(dlq.Config.MaxBytes).To(Equal(int64(minDeadLetterBytes)), "a tenth, but at least 16 MiB")
		Expect(dlq.Config.Discard).To(Equal(jetstream.DiscardNew))

		other := newSource()
		Expect(Ensure(ctx, js, other, Settings{Tenant: "other"})).To(Succeed())
		Expect(streamInfo(ctx, other.StreamName()).Config.MaxBytes).To(Equal(int64(DefaultMaxBytes)))

		payload := bytes.Repeat([]byte("x"), 4<<10)
		var refused error
		for i := range 100 {
			m := nats.NewMsg(src.Subject("track"))
			m.Data = payload
			m.Header.Set(nats.MsgIdHdr, fmt.Sprintf("m%d", i))
			if _, err := js.PublishMsg(ctx, m); err != nil {
				refused = err
				break
			}
		}
		Expect(refused).To(HaveOccurred(), "a full stream refuses new messages")
		held := streamInfo(ctx, src.StreamName()).State.Msgs
		Expect(held).To(BeNumerically(">", 10), "what it accepted stays")
		publish(ctx, other.Subject("track"), "still-flowing") // another tenant is not affected
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.MaxBytes).To(Equal(int64(64 << 10)))
		Expect(state.Bytes).To(BeNumerically(">", 48<<10))
	})

	It("refuses to adopt a stream of another tenant with the same name, and adopts its own", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{Tenant: "acme"})).To(Succeed())
		Expect(streamInfo(ctx, src.StreamName()).Config.Metadata).To(HaveKeyWithValue(MetadataTenant, "acme"))
		Expect(Ensure(ctx, js, src, Settings{Tenant: "globex"})).To(MatchError(ErrOtherTenant))
		Expect(Ensure(ctx, js, src, Settings{Tenant: "acme"})).To(Succeed())

		By("recording the owning source's UID, and a re-created source of the tenant adopting it")
		Expect(Ensure(ctx, js, src, Settings{Tenant: "acme", SourceUID: "uid-1"})).To(Succeed())
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.StreamConfig.Metadata).To(And(HaveKeyWithValue(MetadataTenant, "acme"), HaveKeyWithValue(MetadataSourceUID, "uid-1")))
		Expect(state.DeadLetterStreamConfig.Metadata).To(HaveKeyWithValue(MetadataSourceUID, "uid-1"))
		Expect(InSync(src, Settings{Tenant: "acme", SourceUID: "uid-1"}, state)).To(BeTrue())
		Expect(InSync(src, Settings{Tenant: "acme", SourceUID: "uid-2"}, state)).To(BeFalse(), "a new owner is written")
		Expect(Ensure(ctx, js, src, Settings{Tenant: "acme", SourceUID: "uid-2"})).To(Succeed())
		Expect(streamInfo(ctx, src.StreamName()).Config.Metadata).To(HaveKeyWithValue(MetadataSourceUID, "uid-2"))
		Expect(Ensure(ctx, js, src, Settings{Tenant: "globex", SourceUID: "uid-3"})).To(MatchError(ErrOtherTenant))

		By("a stream made before tenants were recorded is claimed by the first tenant to ensure it")
		legacy := newSource()
		Expect(Ensure(ctx, js, legacy, Settings{})).To(Succeed())
		Expect(Ensure(ctx, js, legacy, Settings{Tenant: "acme"})).To(Succeed())
		Expect(Ensure(ctx, js, legacy, Settings{Tenant: "globex"})).To(MatchError(ErrOtherTenant))
	})
})
