package receiver_test

import (
	"encoding/json"
	"net/http"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("analytics.js settings, /v1/projects/{writeKey}/settings", func() {
	get := func(key string, header http.Header) (*http.Response, map[string]any) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/v1/projects/"+key+"/settings", nil)
		Expect(err).NotTo(HaveOccurred())
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		var body map[string]any
		Expect(json.NewDecoder(resp.Body).Decode(&body)).To(Succeed())
		return resp, body
	}

	It("points a known key's Segment.io integration at this receiver, for any origin", func() {
		resp, body := get(acmeKey, nil)
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
		Expect(resp.Header.Get("Access-Control-Allow-Origin")).To(Equal("*"))
		Expect(body["integrations"]).To(HaveKeyWithValue("Segment.io", And(
			HaveKeyWithValue("apiKey", acmeKey),
			HaveKeyWithValue("apiHost", resp.Request.URL.Host+"/v1"),
			HaveKeyWithValue("protocol", "http"))))
		Expect(body["metrics"]).To(HaveKeyWithValue("sampleRate", 0.0), "the SDK's own metrics would go to Segment")
		Expect(body["remotePlugins"]).To(BeEmpty())

		_, body = get(acmeKey, http.Header{"X-Forwarded-Proto": {"https"}})
		Expect(body["integrations"]).To(HaveKeyWithValue("Segment.io", HaveKeyWithValue("protocol", "https")),
			"behind a TLS-terminating ingress")
	})

	It("answers an unknown key with 404, as Segment's CDN does", func() {
		resp, body := get("nobody-has-this-key", nil)
		Expect(resp.StatusCode).To(Equal(http.StatusNotFound))
		Expect(body).To(HaveKeyWithValue("code", "unknown_write_key"))
	})
})
