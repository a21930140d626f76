package worker

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("The end of a pull", func() {
	DescribeTable("keeps the consumer when the pull merely ended, and binds again when it failed",
		func(err error, normal bool) {
			Expect(pullEndedNormally(err)).To(Equal(normal))
		},
		Entry("no error", nil, true),
		Entry("a context deadline ended it", context.DeadlineExceeded, true),
		Entry("the server counted the batch delivered, some messages did not arrive (a busy cluster)", jetstream.ErrBatchCompleted, true),
		Entry("the same, wrapped", fmt.Errorf("pull: %w", jetstream.ErrBatchCompleted), true),
		Entry("the consumer was deleted", jetstream.ErrConsumerDeleted, false),
		Entry("the server stopped sending heartbeats", jetstream.ErrNoHeartbeat, false),
		Entry("the consumer's leader changed", jetstream.ErrConsumerLeadershipChanged, false),
	)
})
