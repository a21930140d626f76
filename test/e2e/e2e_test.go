package e2e

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	analytics "github.com/segmentio/analytics-go/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/workers/stream"
)

const (
	sharedSecret = "e2e-segment-webhook-secret"
	tenantNS     = "tenants"
	keyV1        = "e2e-write-key-v1-0123456789abcdef"
	keyV2        = "e2e-write-key-v2-fedcba9876543210"
)

func manifests(writeKey string) string {
	return `
apiVersion: v1
kind: Namespace
metadata: {name: tenants}
---
# The manager runs with --require-tenant (its default): tenant acme is bound to namespace tenants.
apiVersion: tally.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {namespaces: [tenants]}
---
apiVersion: v1
kind: Secret
metadata: {name: acme-segment, namespace: tenants, labels: {tally.dev/source-secret: "true"}}
stringData:
  writeKey: ` + writeKey + `
  sharedSecret: ` + sharedSecret + `
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata: {name: acme-web, namespace: tenants}
spec:
  tenant: acme
  writeKeySecretRef: {name: acme-segment, key: writeKey}
  destination:
    sharedSecretRef: {name: acme-segment}
  accountProperty: accountId
  ignoredEvents: ["Heartbeat"]
  # Partitioned: the receiver routes by user, the worker consumes a consumer per partition with
  # its NATS user, and the rows are what one partition gives.
  stream: {partitions: 4}
`
}

// failures collects what analytics-go reports through its callback.
type failures struct {
	mu   sync.Mutex
	errs []error
}

func (f *failures) Success(analytics.Message) {}
func (f *failures) Failure(_ analytics.Message, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, err)
}

var _ = Describe("from kubectl apply to rows in Postgres", Ordered, func() {
	var receiver, worker *pod
	var started []*pod
	// Pods live across the ordered specs, as they would in a cluster; stop them all at the end.
	AfterAll(func() {
		for _, p := range started {
			p.proc.stop()
		}
	})

	It("reconciles the applied SegmentSource into Deployments", func() {
		kubectlApply(manifests(keyV1))
		for _, name := range []string{"acme-web-receiver", "acme-web-worker"} {
			Eventually(func() error {
				return k8s.Get(ctx, types.NamespacedName{Namespace: tenantNS, Name: name}, &appsv1.Deployment{})
			}).WithTimeout(60*time.Second).Should(Succeed(), name)
		}
	})

	It("runs the pods the operator specified and turns Ready", func() {
		receiver = runPod(tenantNS, "acme-web-receiver")
		worker = runPod(tenantNS, "acme-web-worker")
		started = append(started, receiver, worker)
		receiver.waitReady(tenantNS)
		worker.waitReady(tenantNS)

		out, err := kubectl("wait", "--for=condition=Ready", "segmentsource/acme-web", "-n", tenantNS, "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
		// The receiver and the worker above ran with NATS users of their own (NATS checks them).
		out, err = kubectl("wait", "--for=condition=NATSIsolated", "segmentsource/acme-web", "-n", tenantNS, "--timeout=10s")
		Expect(err).NotTo(HaveOccurred(), out)
	})

	It("maps events sent with a real Segment client into the tables", func() {
		var cb failures
		client, err := analytics.NewWithConfig(keyV1, analytics.Config{
			Endpoint: receiver.url(8080), BatchSize: 3, Interval: 50 * time.Millisecond, Callback: &cb,
		})
		Expect(err).NotTo(HaveOccurred())
		Expect(client.Enqueue(analytics.Group{UserId: "u1", GroupId: "acc-1",
			Traits: analytics.NewTraits().SetName("Acme Corp").Set("plan", "pro")})).To(Succeed())
		Expect(client.Enqueue(analytics.Identify{UserId: "u1",
			Traits: analytics.NewTraits().SetEmail("ada@acme.test").Set("company", map[string]any{"id": 42, "name": "Acme Labs"})})).To(Succeed())
		Expect(client.Enqueue(analytics.Track{UserId: "u1", Event: "Report Exported",
			Properties: analytics.NewProperties().Set("accountId", "acc-1").Set("format", "csv")})).To(Succeed())
		Expect(client.Enqueue(analytics.Track{UserId: "u1", Event: "Heartbeat"})).To(Succeed())
		// Sent last: once it is stored, the Heartbeat before it has been through the pipeline too.
		Expect(client.Enqueue(analytics.Track{UserId: "u1", Event: "Sentinel"})).To(Succeed())
		Expect(client.Close()).To(Succeed())
		Expect(cb.errs).To(BeEmpty())

		Eventually(func() (string, error) {
			var name string
			err := db.QueryRow(ctx, `SELECT coalesce(name, '') FROM tally.accounts WHERE tenant = 'acme' AND account_id = 'acc-1'`).Scan(&name)
			return name, err
		}).WithTimeout(30 * time.Second).Should(Equal("Acme Corp"))
		Eventually(func() (int, error) {
			var n int
			err := db.QueryRow(ctx, `SELECT count(*) FROM tally.account_users WHERE tenant = 'acme' AND user_id = 'u1' AND linked`).Scan(&n)
			return n, err
		}).WithTimeout(30*time.Second).Should(Equal(2), "u1 linked to acc-1 (group) and 42 (identify company)")
		var email, labs string
		Expect(db.QueryRow(ctx, `SELECT traits->>'email' FROM tally.users WHERE tenant = 'acme' AND user_id = 'u1'`).Scan(&email)).To(Succeed())
		Expect(email).To(Equal("ada@acme.test"))
		Expect(db.QueryRow(ctx, `SELECT name FROM tally.accounts WHERE tenant = 'acme' AND account_id = '42'`).Scan(&labs)).To(Succeed())
		Expect(labs).To(Equal("Acme Labs"))

		Eventually(func() (string, error) {
			var account string
			err := db.QueryRow(ctx, `SELECT account_id FROM tally.events WHERE tenant = 'acme' AND event = 'Report Exported'`).Scan(&account)
			return account, err
		}).WithTimeout(30 * time.Second).Should(Equal("acc-1"))
		Eventually(func() (int, error) {
			var n int
			err := db.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = 'acme' AND event = 'Sentinel'`).Scan(&n)
			return n, err
		}).WithTimeout(30 * time.Second).Should(Equal(1))
		var heartbeats int
		Expect(db.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = 'acme' AND event = 'Heartbeat'`).Scan(&heartbeats)).To(Succeed())
		Expect(heartbeats).To(BeZero(), "ignored events are never stored")
	})

	It("maps a signed delivery of Segment's Webhooks destination, dated as Segment dated it, and applies its deletion requests", func() {
		deliver := func(body string) {
			mac := hmac.New(sha1.New, []byte(sharedSecret))
			mac.Write([]byte(body))
			req, err := http.NewRequest(http.MethodPost, receiver.url(8080)+"/v1/segment", strings.NewReader(body))
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Signature", hex.EncodeToString(mac.Sum(nil)))
			resp, err := http.DefaultClient.Do(req)
			Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			Expect(resp.StatusCode).To(Equal(http.StatusOK))
		}
		deliver(`{"type":"identify","messageId":"fw-e2e-1","userId":"u-forwarded","traits":{"plan":"enterprise"},` +
			`"context":{"library":{"name":"analytics.js","version":"2.11.1"}},"projectId":"q5Vb3pPT3d","version":2,` +
			`"originalTimestamp":"2025-05-03T10:14:02.117Z","sentAt":"2025-05-03T10:14:02.120Z",` +
			`"receivedAt":"2025-05-03T10:14:03.025Z","timestamp":"2025-05-03T10:14:03.022Z"}`)
		Eventually(func() (time.Time, error) {
			var created time.Time
			err := db.QueryRow(ctx, `SELECT created_at FROM tally.users WHERE tenant = 'acme' AND user_id = 'u-forwarded'`).Scan(&created)
			return created, err
		}).WithTimeout(30 * time.Second).Should(BeTemporally("==", time.Date(2025, 5, 3, 10, 14, 3, 22e6, time.UTC)))

		deliver(`{"type":"delete","messageId":"fw-e2e-del","userId":"u-forwarded","context":{},"projectId":"q5Vb3pPT3d",` +
			`"receivedAt":"2025-06-01T00:00:01Z","timestamp":"2025-06-01T00:00:00Z"}`)
		Eventually(func() (int, error) {
			var n int
			err := db.QueryRow(ctx, `SELECT count(*) FROM tally.users WHERE tenant = 'acme' AND user_id = 'u-forwarded'`).Scan(&n)
			return n, err
		}).WithTimeout(30 * time.Second).Should(BeZero())
	})

	It("reports Receiving once messages reached the stream", func() {
		out, err := kubectl("wait", "--for=condition=Receiving", "segmentsource/acme-web", "-n", tenantNS, "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
		out, err = kubectl("get", "segmentsources", "-n", tenantNS)
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Println(out)
		Expect(out).To(MatchRegexp(`acme-web\s+acme\s+True\s+True\s+http://acme-web-receiver\.tenants\.svc:8080`))

		By("the messages went through the partitions' consumers, none through the unpartitioned one")
		state, err := stream.Inspect(ctx, js, stream.Source{Namespace: tenantNS, Name: "acme-web"})
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Partitions).To(Equal(4))
		legacy, err := js.Consumer(ctx, state.StreamConfig.Name, stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		// The consumer sequence counts deliveries; the stream sequence may move past messages the
		// consumer's filter skips (a memory-stored consumer reports that).
		Expect(legacy.CachedInfo().Delivered.Consumer).To(BeZero())
	})

	It("accepts the new write key and refuses the old one after a rotation", func() {
		var before appsv1.Deployment
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: tenantNS, Name: "acme-web-receiver"}, &before)).To(Succeed())
		kubectlApply(manifests(keyV2))

		By("the operator rolls the receiver out with the new key")
		Eventually(func() (int64, error) {
			var d appsv1.Deployment
			err := k8s.Get(ctx, types.NamespacedName{Namespace: tenantNS, Name: "acme-web-receiver"}, &d)
			return d.Generation, err
		}).WithTimeout(60 * time.Second).Should(BeNumerically(">", before.Generation))
		next := runPod(tenantNS, "acme-web-receiver")
		started = append(started, next)
		next.waitReady(tenantNS)
		receiver.proc.stop()
		receiver = next

		Expect(post(receiver.url(8080), keyV2)).To(Equal(http.StatusOK))
		Expect(post(receiver.url(8080), keyV1)).To(Equal(http.StatusUnauthorized))
		Eventually(func() (int, error) {
			var n int
			err := db.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = 'acme' AND user_id = 'u2'`).Scan(&n)
			return n, err
		}).WithTimeout(30*time.Second).Should(Equal(1), "the event sent with the new key is stored once; the refused one never")
	})

	It("removes the stream on deletion and keeps the customer's rows", func() {
		receiver.proc.stop()
		worker.proc.stop()
		out, err := kubectl("delete", "segmentsource/acme-web", "-n", tenantNS, "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(func() error {
			return k8s.Get(ctx, types.NamespacedName{Namespace: tenantNS, Name: "acme-web"}, &tallyv1.SegmentSource{})
		}).WithTimeout(60 * time.Second).ShouldNot(Succeed())
		src := stream.Source{Namespace: tenantNS, Name: "acme-web"}
		_, err = js.Stream(ctx, src.StreamName())
		Expect(errors.Is(err, jetstream.ErrStreamNotFound)).To(BeTrue(), "stream gone: %v", err)

		var events int
		Expect(db.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = 'acme'`).Scan(&events)).To(Succeed())
		Expect(events).To(BeNumerically(">=", 2))
		var secret corev1.Secret
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: tenantNS, Name: "acme-segment"}, &secret)).To(Succeed(), "the user's Secret is theirs")
	})
})

// post sends one track call with the given write key and returns the HTTP status.
func post(base, key string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, base+"/v1/track", strings.NewReader(`{"userId":"u2","event":"Signed In"}`))
	if err != nil {
		return 0, err
	}
	req.SetBasicAuth(key, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
