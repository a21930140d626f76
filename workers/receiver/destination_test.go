package receiver_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// forwarded is a message as Segment's Webhooks destinations deliver it (the shape of Segment's
// destination docs: Segment's receivedAt, sentAt, originalTimestamp, computed timestamp,
// projectId, version, context.library).
func forwarded(id, typ, extra string) string {
	return `{"type":"` + typ + `","messageId":"` + id + `","userId":"97980cfea0067","anonymousId":"507f191e810c19729de860ea",` +
		`"context":{"ip":"8.8.8.8","library":{"name":"analytics.js","version":"2.11.1"}},"integrations":{},` +
		`"originalTimestamp":"2025-05-03T10:14:02.117Z","sentAt":"2025-05-03T10:14:02.120Z",` +
		`"receivedAt":"2025-05-03T10:14:03.025Z","timestamp":"2025-05-03T10:14:03.022Z",` +
		`"projectId":"q5Vb3pPT3d","version":2` + extra + `}`
}

// signature is Segment's X-Signature: lowercase hex HMAC-SHA1 of the body, keyed with the secret.
func signature(secret, body string) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(body))
	return hex.EncodeToString(mac.Sum(nil))
}

func send(method, body string, opts ...reqOpt) response {
	GinkgoHelper()
	return sendTo(srv.URL+"/v1/segment", method, body, opts...)
}

// sendTo is send to another URL: the named destination path, or another receiver's.
func sendTo(url, method, body string, opts ...reqOpt) response {
	GinkgoHelper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Segment.io/1.0")
	for _, o := range opts {
		o(req)
	}
	return do(req)
}

var _ = Describe("The destination route, /v1/segment", func() {
	It("takes a signed message of any type by POST, as the classic Webhooks destination sends it, and keeps Segment's times", func() {
		from := mark(acme)
		body := forwarded("fw-track-1", "track", `,"event":"Report Exported","properties":{"format":"csv"}`)
		r := send(http.MethodPost, body, header("X-Signature", signature(acmeSecret, body)))
		Expect(r.Status).To(Equal(http.StatusOK), r.Raw)
		Expect(r.Body).To(Equal(success))
		msgs := since(acme, from)
		Expect(msgs).To(HaveLen(1))
		Expect(msgs[0].MsgID).To(Equal("fw-track-1"))
		Expect(msgs[0].Message.Timestamp).To(BeTemporally("==", time.Date(2025, 5, 3, 10, 14, 3, 22e6, time.UTC)), "not recomputed from Tally's clock")
		Expect(msgs[0].Fields).To(HaveKeyWithValue("receivedAt", "2025-05-03T10:14:03.025Z"))
		Expect(msgs[0].Fields).To(HaveKeyWithValue("originalTimestamp", "2025-05-03T10:14:02.117Z"))
		Expect(msgs[0].Fields).To(HaveKeyWithValue("projectId", "q5Vb3pPT3d"))
	})

	DescribeTable("takes Webhooks (Actions) deliveries: PUT or PATCH, arrays, the write key as Basic or Bearer",
		func(method string, auth reqOpt) {
			from := mark(acme)
			body := `[` + forwarded("fw-"+method+"-1", "identify", `,"traits":{"plan":"pro"}`) + `,` +
				forwarded("fw-"+method+"-2", "group", `,"groupId":"acc-1","traits":{"name":"Acme"}`) + `]`
			r := send(method, body, auth)
			Expect(r.Status).To(Equal(http.StatusOK), r.Raw)
			Expect(msgIDs(since(acme, from))).To(Equal([]string{"fw-" + method + "-1", "fw-" + method + "-2"}))
		},
		Entry("POST with Basic", http.MethodPost, basic(acmeKey)),
		Entry("PUT with Bearer", http.MethodPut, header("Authorization", "Bearer "+acmeKey)),
		Entry("PATCH with Bearer", http.MethodPatch, header("Authorization", "Bearer "+acmeKey)),
	)

	It("takes a {\"batch\": [...]} body and a batch of 3,000 events (Actions batches up to 4,000)", func() {
		from := mark(acme)
		Expect(send(http.MethodPost, `{"batch":[`+forwarded("fw-b-1", "page", `,"name":"Home"`)+`]}`, basic(acmeKey)).Status).To(Equal(http.StatusOK))
		var items []string
		for i := range 3000 {
			items = append(items, forwarded(fmt.Sprintf("fw-big-%04d", i), "track", `,"event":"Clicked"`))
		}
		r := send(http.MethodPost, "["+strings.Join(items, ",")+"]", basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK), r.Raw)
		Expect(since(acme, from)).To(HaveLen(3001))
	})

	It("accepts a batch signed over its first event, as the classic destination signs batches", func() {
		first := forwarded("fw-first-1", "track", `,"event":"A"`)
		body := `[` + first + `,` + forwarded("fw-first-2", "track", `,"event":"B"`) + `]`
		Expect(send(http.MethodPost, body, header("X-Signature", signature(acmeSecret, first))).Status).To(Equal(http.StatusOK))
	})

	It("answers 401 to a wrong signature, a signature of other bytes, a wrong key and no credentials", func() {
		from := mark(acme)
		body := forwarded("fw-bad", "track", `,"event":"E"`)
		for _, auth := range []reqOpt{
			header("X-Signature", signature("not-the-secret", body)),
			header("X-Signature", signature(acmeSecret, body+" ")),
			header("X-Signature", "zz"),
			header("Authorization", "Bearer wrong-key"),
			func(*http.Request) {},
		} {
			r := send(http.MethodPost, body, auth)
			Expect(r.Status).To(Equal(http.StatusUnauthorized))
			Expect(r.Body).To(HaveErrorCode(segment.CodeInvalidWriteKey))
		}
		Expect(since(acme, from)).To(BeEmpty())
	})

	It("takes a delivery to /v1/segment/<namespace>/<name> with that source's credentials only", func() {
		from := mark(acme)
		body := forwarded("fw-named-1", "track", `,"event":"Named"`)
		signed := header("X-Signature", signature(acmeSecret, body))
		Expect(sendTo(srv.URL+"/v1/segment/tenants/acme-web", http.MethodPost, body, signed).Status).To(Equal(http.StatusOK))
		Expect(sendTo(srv.URL+"/v1/segment/tenants/acme-web", http.MethodPut, forwarded("fw-named-2", "track", `,"event":"Named"`),
			basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(msgIDs(since(acme, from))).To(Equal([]string{"fw-named-1", "fw-named-2"}))

		By("another source's path, an unknown one, or another source's key: 401")
		for _, refused := range []struct {
			path string
			auth reqOpt
		}{
			{"/v1/segment/tenants/beta-app", signed},
			{"/v1/segment/tenants/nobody", signed},
			{"/v1/segment/tenants/acme-web", basic(betaKey)},
			{"/v1/segment/tenants/beta-app", header("Authorization", "Bearer "+acmeKey)},
		} {
			r := sendTo(srv.URL+refused.path, http.MethodPost, forwarded("fw-named-x", "track", `,"event":"Named"`), refused.auth)
			Expect(r.Status).To(Equal(http.StatusUnauthorized), refused.path)
			Expect(r.Body).To(HaveErrorCode(segment.CodeInvalidWriteKey))
		}
		Expect(msgIDs(since(acme, from))).To(Equal([]string{"fw-named-1", "fw-named-2"}))
		Expect(since(beta, from)).To(BeEmpty())
	})

	It("checks a signature against a few sources' secrets at most: a receiver of many needs the source named", func() {
		// Each check is an HMAC of the whole body: trying a pool's thousand members' secrets on a
		// 16 MB body would let anyone burn 11 s of CPU per request.
		var sources []*source.Config
		for i := range 20 {
			sources = append(sources, &source.Config{Namespace: "many", Name: fmt.Sprintf("s%02d", i), Tenant: fmt.Sprintf("many%02d", i),
				WriteKeys: []string{fmt.Sprintf("many-write-key-%02d-0123456789abcdef", i)}, SharedSecrets: []string{fmt.Sprintf("many-secret-%02d", i)}})
		}
		target := sources[7]
		Expect(stream.Ensure(context.Background(), js, target.Stream(), target.StreamSettings())).To(Succeed())
		DeferCleanup(func() { _ = stream.Delete(context.Background(), js, target.Stream()) })
		many, err := receiver.New(receiver.Options{JetStream: js, Conn: nc, PublishTimeout: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil)), Metrics: receiver.NewMetrics(prometheus.NewRegistry()),
			Gatherer: prometheus.NewRegistry()}, sources)
		Expect(err).NotTo(HaveOccurred())
		server := httptest.NewServer(many.Handler())
		DeferCleanup(server.Close)

		body := forwarded("fw-many-1", "track", `,"event":"Signed"`)
		signed := header("X-Signature", signature("many-secret-07", body))
		r := sendTo(server.URL+"/v1/segment", http.MethodPost, body, signed)
		Expect(r.Status).To(Equal(http.StatusUnauthorized))
		Expect(r.Body).To(HaveKeyWithValue("message", ContainSubstring("/v1/segment/<namespace>/<name>")))
		Expect(sendTo(server.URL+"/v1/segment/many/s07", http.MethodPost, body, signed).Status).To(Equal(http.StatusOK))
		Expect(sendTo(server.URL+"/v1/segment", http.MethodPost, forwarded("fw-many-2", "track", `,"event":"Keyed"`),
			basic("many-write-key-07-0123456789abcdef")).Status).To(Equal(http.StatusOK), "a key still routes on the bare path")
	})

	It("answers 200 with the rejected list for a bad message, even alone (a 4xx would make Segment drop the good ones)", func() {
		from := mark(acme)
		r := send(http.MethodPost, `[{"type":"track","messageId":"no-user","event":"E"},`+forwarded("fw-ok", "track", `,"event":"E"`)+`]`, basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body["rejected"]).To(ConsistOf(HaveKeyWithValue("code", segment.CodeIDRequired)))
		Expect(msgIDs(since(acme, from))).To(Equal([]string{"fw-ok"}))
	})

	It("stores Segment's user-deletion requests like any message, answering 200 once JetStream has them", func() {
		from := mark(acme)
		r := send(http.MethodPost, `{"type":"delete","userId":"u1","messageId":"del-1","timestamp":"2025-03-04T05:06:07Z","context":{}}`, basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body).NotTo(HaveKey("rejected"))
		Expect(msgIDs(since(acme, from))).To(Equal([]string{"del-1"}))
	})
})

var _ = Describe("tally receiver with shared secrets", func() {
	It("reads them from a file and picks up a rotation without a restart", func() {
		dir := GinkgoT().TempDir()
		secrets := filepath.Join(dir, "sharedSecret")
		Expect(os.WriteFile(secrets, []byte("old-secret\n"), 0o600)).To(Succeed())
		rc := startCommand("--shared-secrets-file", secrets, "--reload-interval", "20ms", "--shutdown-delay", "0s")
		post := func(secret string) int {
			body := forwarded("rot-"+secret, "track", `,"event":"E"`)
			req, _ := http.NewRequest(http.MethodPost, rc.base+"/v1/segment", strings.NewReader(body))
			req.Header.Set("X-Signature", signature(secret, body))
			return statusOf(http.DefaultClient.Do(req))
		}
		Expect(post("old-secret")).To(Equal(http.StatusOK))
		Expect(post("new-secret")).To(Equal(http.StatusUnauthorized))

		By("both secrets during the rotation, then only the new one")
		Expect(os.WriteFile(secrets, []byte("old-secret\nnew-secret\n"), 0o600)).To(Succeed())
		Eventually(func() int { return post("new-secret") }).Should(Equal(http.StatusOK))
		Expect(post("old-secret")).To(Equal(http.StatusOK))
		Expect(os.WriteFile(secrets, []byte("new-secret\n"), 0o600)).To(Succeed())
		Eventually(func() int { return post("old-secret") }).Should(Equal(http.StatusUnauthorized))
		Expect(post("new-secret")).To(Equal(http.StatusOK))
	})
})
