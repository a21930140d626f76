package receiver_test

import (
	"net/http"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
)

var _ = Describe("Authentication by write key", func() {
	one := `{"batch":[{"type":"track","userId":"u1","event":"Authed"}]}`

	DescribeTable("accepts every way clients send the key",
		func(body string, opts ...reqOpt) {
			from := mark(acme)
			r := post("/v1/batch", []byte(body), opts...)
			Expect(r.Status).To(Equal(http.StatusOK), r.Raw)
			msgs := since(acme, from)
			Expect(msgs).To(HaveLen(1))
			Expect(string(msgs[0].JSON)).NotTo(ContainSubstring(acmeKey))
			Expect(msgs[0].Fields).NotTo(HaveKey("writeKey"))
		},
		Entry("Basic username with empty password (analytics-go)", one, basic(acmeKey)),
		Entry("Basic without the colon", one, basicWithoutColon(acmeKey)),
		Entry("writeKey in the body (analytics-node 2.x)", `{"writeKey":"`+acmeKey+`","batch":[{"type":"track","userId":"u1","event":"Authed"}]}`),
		Entry("writeKey on each message", `{"batch":[{"type":"track","userId":"u1","event":"Authed","writeKey":"`+acmeKey+`"}]}`),
		Entry("Bearer token plus writeKey in the body (OAuth)", `{"writeKey":"`+acmeKey+`","batch":[{"type":"track","userId":"u1","event":"Authed"}]}`, header("Authorization", "Bearer some.oauth.token")),
		Entry("Basic and body key together (analytics-node 3.x)", `{"writeKey":"`+acmeKey+`","batch":[{"type":"track","userId":"u1","event":"Authed"}]}`, basic(acmeKey)),
	)

	DescribeTable("answers 401 with a JSON body, never echoing the key",
		func(body string, opts ...reqOpt) {
			from := mark(acme)
			r := post("/v1/batch", []byte(body), opts...)
			Expect(r.Status).To(Equal(http.StatusUnauthorized))
			Expect(r.Body).To(HaveErrorCode(segment.CodeInvalidWriteKey))
			Expect(r.Raw).NotTo(ContainSubstring("wrong-key"))
			Expect(since(acme, from)).To(BeEmpty())
		},
		Entry("no key at all", one),
		Entry("unknown Basic key", one, basic("wrong-key")),
		Entry("unknown body key", `{"writeKey":"wrong-key","batch":[{"type":"track","userId":"u1","event":"E"}]}`),
		Entry("Bearer without a body key", one, header("Authorization", "Bearer token")),
		Entry("a Basic header that is not base64", one, header("Authorization", "Basic !!!")),
		Entry("the Basic key wins over a valid body key", `{"writeKey":"`+acmeKey+`","batch":[{"type":"track","userId":"u1","event":"E"}]}`, basic("wrong-key")),
		Entry("a key that only differs in case", one, basic("ACME-WRITE-KEY-0123456789ABCDEF0")),
	)

	It("routes each request to the source its key belongs to", func() {
		fromAcme, fromBeta := mark(acme), mark(beta)
		Expect(post("/v1/track", []byte(`{"userId":"u1","event":"For Acme"}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(post("/v1/track", []byte(`{"userId":"u1","event":"For Beta"}`), basic(betaKey)).Status).To(Equal(http.StatusOK))
		a, b := since(acme, fromAcme), since(beta, fromBeta)
		Expect(a).To(HaveLen(1))
		Expect(a[0].Message.Event).To(Equal("For Acme"))
		Expect(b).To(HaveLen(1))
		Expect(b[0].Message.Event).To(Equal("For Beta"))
		Expect(b[0].Subject).To(Equal("tally.tenants.beta-app.msg.track"))
	})

	It("routes per-message keys message by message and rejects messages without a valid one", func() {
		fromAcme, fromBeta := mark(acme), mark(beta)
		r := post("/v1/batch", []byte(`{"batch":[
			{"type":"track","userId":"u1","event":"A","writeKey":"`+acmeKey+`"},
			{"type":"track","userId":"u1","event":"B","writeKey":"`+betaKey+`"},
			{"type":"track","userId":"u1","event":"X","writeKey":"wrong-key"},
			{"type":"track","userId":"u1","event":"Y"}]}`))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body).To(HaveKeyWithValue("accepted", BeEquivalentTo(2)))
		Expect(r.Body["rejected"]).To(ConsistOf(
			HaveKeyWithValue("index", BeEquivalentTo(2)), HaveKeyWithValue("index", BeEquivalentTo(3))))
		Expect(r.Raw).NotTo(ContainSubstring("wrong-key"))
		Expect(since(acme, fromAcme)).To(ConsistOf(HaveField("Message.Event", "A")))
		Expect(since(beta, fromBeta)).To(ConsistOf(HaveField("Message.Event", "B")))
	})

	Describe("key rotation", func() {
		AfterEach(func() { Expect(rcv.SetSources([]*source.Config{acme, beta})).To(Succeed()) })

		It("accepts every key of a source during a rotation and drops a retired key after SetSources", func() {
			const newKey = "acme-new-key-0123456789abcdef012"
			rotating := newAcme()
			rotating.WriteKeys = []string{acmeKey, newKey}
			Expect(rcv.SetSources([]*source.Config{rotating, beta})).To(Succeed())
			Expect(post("/v1/batch", []byte(one), basic(acmeKey)).Status).To(Equal(http.StatusOK))
			Expect(post("/v1/batch", []byte(one), basic(newKey)).Status).To(Equal(http.StatusOK))

			rotated := newAcme()
			rotated.WriteKeys = []string{newKey}
			Expect(rcv.SetSources([]*source.Config{rotated, beta})).To(Succeed())
			Expect(post("/v1/batch", []byte(one), basic(acmeKey)).Status).To(Equal(http.StatusUnauthorized))
			from := mark(acme)
			Expect(post("/v1/batch", []byte(one), basic(newKey)).Status).To(Equal(http.StatusOK))
			Expect(since(acme, from)).To(HaveLen(1))
		})

		It("refuses a set of sources that share a key and keeps the current one", func() {
			clash := newBeta()
			clash.WriteKeys = []string{betaKey, acmeKey}
			err := rcv.SetSources([]*source.Config{acme, clash})
			Expect(err).To(MatchError(ContainSubstring("share a write key")))
			Expect(err.Error()).NotTo(ContainSubstring(acmeKey))
			Expect(post("/v1/batch", []byte(one), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		})
	})
})
