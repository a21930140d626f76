package receiver_test

import (
	"fmt"
	"net/http"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// singleBodies are minimal valid messages of each type, without the type field: the path gives it.
var singleBodies = map[string]string{
	"identify": `{"userId":"u1","traits":{"email":"u1@example.com"}}`,
	"track":    `{"userId":"u1","event":"Report Exported","properties":{"rows":3}}`,
	"group":    `{"userId":"u1","groupId":"acc1","traits":{"name":"Acme"}}`,
	"page":     `{"anonymousId":"a1","name":"Home"}`,
	"screen":   `{"anonymousId":"a1","name":"Settings"}`,
	"alias":    `{"userId":"u1","previousId":"a1"}`,
}

const threeMessageBatch = `{"batch":[
	{"type":"identify","userId":"u1","messageId":"m-identify"},
	{"type":"track","userId":"u1","event":"Clicked","messageId":"m-track"},
	{"type":"group","userId":"u1","groupId":"acc1","messageId":"m-group"}]}`

var _ = Describe("Tracking API endpoints", func() {
	DescribeTable("single-message endpoints publish to the source's subject for the type",
		func(path, typ string) {
			from := mark(acme)
			r := post(path, []byte(singleBodies[typ]), basic(acmeKey))
			Expect(r.Status).To(Equal(http.StatusOK))
			Expect(r.Body).To(Equal(success))
			msgs := since(acme, from)
			Expect(msgs).To(HaveLen(1))
			Expect(msgs[0].Subject).To(Equal("tally.tenants.acme-web.msg." + typ))
			Expect(msgs[0].Message.Type).To(Equal(typ))
			Expect(msgs[0].MsgID).To(Equal(msgs[0].Message.MessageID))
		},
		func(path, typ string) string { return path },
		Entry(nil, "/v1/identify", "identify"), Entry(nil, "/v1/i", "identify"),
		Entry(nil, "/v1/track", "track"), Entry(nil, "/v1/t", "track"),
		Entry(nil, "/v1/group", "group"), Entry(nil, "/v1/g", "group"),
		Entry(nil, "/v1/page", "page"), Entry(nil, "/v1/p", "page"),
		Entry(nil, "/v1/screen", "screen"), Entry(nil, "/v1/s", "screen"),
		Entry(nil, "/v1/alias", "alias"), Entry(nil, "/v1/a", "alias"),
	)

	DescribeTable("batch endpoints publish every message",
		func(path string) {
			from := mark(acme)
			// Each path sends its own messageIds: the same ids would be deduplicated.
			r := post(path, []byte(strings.ReplaceAll(threeMessageBatch, `"m-`, `"`+path+`-`)), basic(acmeKey))
			Expect(r.Status).To(Equal(http.StatusOK))
			Expect(r.Body).To(Equal(success))
			var got []string
			for _, m := range since(acme, from) {
				got = append(got, m.Subject+" "+m.MsgID)
			}
			Expect(got).To(ConsistOf(
				"tally.tenants.acme-web.msg.identify "+path+"-identify",
				"tally.tenants.acme-web.msg.track "+path+"-track",
				"tally.tenants.acme-web.msg.group "+path+"-group"))
		},
		Entry(nil, "/v1/batch"), Entry(nil, "/v1/import"), Entry(nil, "/v1/b"),
	)

	It("answers 404 with a JSON body for paths that are not Tracking API endpoints", func() {
		r := post("/v1/purchase", []byte(`{}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusNotFound))
		Expect(r.Body).To(HaveErrorCode("not_found"))
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/track", nil)
		Expect(do(req).Status).To(Equal(http.StatusNotFound))
	})

	It("refuses a single-message call that fails validation with 400 and the reason", func() {
		from := mark(acme)
		r := post("/v1/track", []byte(`{"userId":"u1"}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusBadRequest))
		Expect(r.Body).To(HaveErrorCode("event_not_defined"))
		r = post("/v1/track", []byte(`{"type":"identify","userId":"u1"}`), basic(acmeKey))
		Expect(r.Body).To(HaveErrorCode("type_mismatch"))
		Expect(since(acme, from)).To(BeEmpty())
	})

	Describe("CORS", func() {
		It("answers the preflight a browser sends before posting with an Authorization header", func() {
			for _, path := range []string{"/v1/t", "/v1/b", "/v1/batch"} {
				req, _ := http.NewRequest(http.MethodOptions, srv.URL+path, nil)
				req.Header.Set("Origin", "https://app.example.com")
				req.Header.Set("Access-Control-Request-Method", "POST")
				req.Header.Set("Access-Control-Request-Headers", "authorization,content-type,x-retry-count")
				r := do(req)
				Expect(r.Status).To(Equal(http.StatusNoContent), path)
				Expect(r.Header.Get("Access-Control-Allow-Origin")).To(Equal("*"))
				Expect(r.Header.Get("Access-Control-Allow-Methods")).To(ContainSubstring("POST"))
				allowed := strings.ToLower(r.Header.Get("Access-Control-Allow-Headers"))
				for _, h := range []string{"content-type", "authorization", "x-retry-count"} {
					Expect(allowed).To(ContainSubstring(h))
				}
			}
		})

		It("lets the browser read every answer, errors included", func() {
			Expect(post("/v1/t", []byte(singleBodies["track"]), basic(acmeKey), header("Origin", "https://app.example.com")).Header.Get("Access-Control-Allow-Origin")).To(Equal("*"))
			Expect(post("/v1/t", []byte(`{`), basic(acmeKey)).Header.Get("Access-Control-Allow-Origin")).To(Equal("*"))
			Expect(post("/v1/t", []byte(`{}`), basic("nope")).Header.Get("Access-Control-Allow-Origin")).To(Equal("*"))
		})
	})

	Describe("health", func() {
		It("serves /healthz and /readyz while NATS is connected", func() {
			for _, path := range []string{"/healthz", "/readyz"} {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
				Expect(do(req).Status).To(Equal(http.StatusOK), path)
			}
		})

		It("exposes request and per-source message counts on /metrics", func() {
			post("/v1/track", []byte(singleBodies["track"]), basic(acmeKey))
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
			r := do(req)
			Expect(r.Status).To(Equal(http.StatusOK))
			Expect(r.Raw).To(ContainSubstring(`tally_receiver_requests_total{code="200",route="/v1/track"}`))
			Expect(r.Raw).To(ContainSubstring(`tally_receiver_messages_total{outcome="accepted",source="tenants/acme-web"}`))
			Expect(r.Raw).To(ContainSubstring(`tally_receiver_publish_duration_seconds_bucket`))
			Expect(r.Raw).To(ContainSubstring(fmt.Sprintf(`tally_receiver_request_duration_seconds_count{route=%q}`, "/v1/track")))
		})
	})
})
