package natsauth_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

func TestNATSAuth(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "NATS users")
}

// The suite runs a real embedded server in decentralized JWT mode (operator, system account,
// the Tally account with a signing key, memory resolver), as a cluster with per-source users
// does. The admin connection plays the operator: it alone creates streams.
var (
	ctx      = context.Background()
	ns       *server.Server
	auth     *natsserver.Auth
	issuer   *natsauth.Issuer
	adminJS  jetstream.JetStream
	acme     = &source.Config{Namespace: "acme-ns", Name: "web", Tenant: "acme", WriteKeys: []string{"acme-write-key-0123456789abcdef"}}
	globex   = &source.Config{Namespace: "globex-ns", Name: "app", Tenant: "globex", WriteKeys: []string{"globex-write-key-0123456789abcd"}}
	allPeers = []*source.Config{acme, globex}
)

var _ = BeforeSuite(func() {
	var err error
	auth, err = natsserver.NewAuth()
	Expect(err).NotTo(HaveOccurred())
	ns, err = natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir(), Auth: auth})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(ns.Shutdown)
	issuer, err = natsauth.EmbeddedIssuer(auth)
	Expect(err).NotTo(HaveOccurred())

	admin, err := natsauth.EmbeddedAdminCreds(auth)
	Expect(err).NotTo(HaveOccurred())
	adminConn := connect(admin, nil)
	adminJS, err = jetstream.New(adminConn)
	Expect(err).NotTo(HaveOccurred())
	for _, src := range allPeers {
		Expect(stream.Ensure(ctx, adminJS, src.Stream(), src.StreamSettings())).To(Succeed())
	}
})

// conn is a connection as one of a source's pods opens it, with the asynchronous errors the
// server sent it (permission violations arrive that way).
type conn struct {
	*nats.Conn
	mu   sync.Mutex
	errs []string
}

func (c *conn) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// connect opens a connection with creds; extra options (an inbox prefix) come last.
func connect(creds []byte, c *conn, extra ...nats.Option) *nats.Conn {
	GinkgoHelper()
	credsOpt, err := natsauth.CredsOption(creds)
	Expect(err).NotTo(HaveOccurred())
	opts := []nats.Option{credsOpt, nats.MaxReconnects(-1)}
	if c != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.errs = append(c.errs, err.Error())
		}))
	}
	nc, err := nats.Connect(ns.ClientURL(), append(opts, extra...)...)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	return nc
}

// podConn connects as src's pod of the role, with a freshly issued user, as the operator mounts it.
func podConn(src *source.Config, role natsauth.Role) *conn {
	GinkgoHelper()
	creds, err := issuer.Issue(src.Stream(), role, time.Now().Add(time.Hour))
	Expect(err).NotTo(HaveOccurred())
	c := &conn{}
	c.Conn = connect(creds, c, natsauth.InboxOption(src.Stream(), role))
	return c
}

// violation is what the server reports for a refused publish or subscription.
func violation(kind, subject string) string {
	return `permissions violation for ` + kind + ` to "` + subject + `"`
}

// haveViolation waits for the server's refusal of kind ("publish"/"subscription") on subject.
func haveViolation(c *conn, kind, subject string) {
	GinkgoHelper()
	Eventually(func() string { return strings.ToLower(strings.Join(c.errors(), "\n")) }, "5s").
		Should(ContainSubstring(strings.ToLower(violation(kind, subject))))
}

// inspect is src's stream state as the operator reads it, with the admin's rights.
func inspect(src *source.Config) stream.State {
	GinkgoHelper()
	state, err := stream.Inspect(ctx, adminJS, src.Stream())
	Expect(err).NotTo(HaveOccurred())
	return state
}

func messages(src *source.Config) uint64 { GinkgoHelper(); return inspect(src).Messages }

func deadLetters(src *source.Config) uint64 {
	GinkgoHelper()
	state := inspect(src)
	Expect(state.DeadLetterStreamExists).To(BeTrue(), "the dead-letter stream")
	return state.DeadLetters
}

func streamExists(name string) bool {
	_, err := adminJS.Stream(ctx, name)
	return err == nil
}

// publishThroughReceiver runs the real receiver for acme on a pod's connection, sends it one
// request of 20 messages (the receiver sends requests of 16 or more as atomic batches when
// atomic is set) and returns how many of the 20 stored messages each atomic batch id carried
// ("" for messages published one by one).
func publishThroughReceiver(js jetstream.JetStream, nc *nats.Conn, atomic bool) map[string]int {
	GinkgoHelper()
	s, err := adminJS.Stream(ctx, acme.Stream().StreamName())
	Expect(err).NotTo(HaveOccurred())
	lastSeq := func() uint64 {
		info, err := s.Info(ctx)
		Expect(err).NotTo(HaveOccurred())
		return info.State.LastSeq
	}
	before := lastSeq()
	rcv, err := receiver.New(receiver.Options{JetStream: js, Conn: nc, AtomicBatches: atomic}, []*source.Config{acme})
	Expect(err).NotTo(HaveOccurred())
	srv := httptest.NewServer(rcv.Handler())
	defer srv.Close()
	body := `{"type":"identify","userId":"u1","traits":{"plan":"pro"}}` +
		strings.Repeat(`,{"type":"track","userId":"u1","event":"Signed In"}`, 19)
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/batch", strings.NewReader(`{"batch":[`+body+`]}`))
	Expect(err).NotTo(HaveOccurred())
	req.SetBasicAuth(acme.WriteKeys[0], "")
	resp, err := http.DefaultClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	Expect(resp.StatusCode).To(Equal(http.StatusOK), "atomic batches: %v", atomic)
	Expect(lastSeq()).To(Equal(before + 20))
	batchIDs := map[string]int{}
	for seq := before + 1; seq <= before+20; seq++ {
		m, err := s.GetMsg(ctx, seq)
		Expect(err).NotTo(HaveOccurred())
		batchIDs[m.Header.Get("Nats-Batch-Id")]++
	}
	return batchIDs
}
