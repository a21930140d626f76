package local

import (
	"net/http"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("tally local against hostile senders", func() {
	It("keeps a far-future identify from pinning a user's traits, and stores the good messages beside unstorable ones", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_hostile")
		r := start(Options{Manifests: manifests(), DataDir: GinkgoT().TempDir(), DatabaseURL: dbURL})
		now := time.Now().UTC()

		By("an identify dated 2999, then a current one")
		code, body := r.post("/v1/identify", acmeKey1, `{"userId":"u1","messageId":"future","timestamp":"2999-01-01T00:00:00Z","traits":{"plan":"forever"}}`)
		Expect(code).To(Equal(http.StatusOK), body)
		code, body = r.post("/v1/identify", acmeKey1, `{"userId":"u1","messageId":"current","timestamp":"`+
			now.Add(time.Second).Format(time.RFC3339Nano)+`","traits":{"plan":"pro"}}`)
		Expect(code).To(Equal(http.StatusOK), body)

		By("a batch with a NUL, invalid UTF-8 and a good message for every tenant")
		code, body = r.post("/v1/batch", acmeKey1, "{\"batch\":["+
			`{"type":"track","userId":"u1","event":"Bad","messageId":"nul","properties":{"p":"a\u0000b"}},`+
			"{\"type\":\"track\",\"userId\":\"u1\",\"event\":\"Bad\",\"messageId\":\"utf8\",\"properties\":{\"p\":\"\xff\"}},"+
			`{"type":"track","userId":"u1","event":"Good","messageId":"good-acme"}]}`)
		Expect(code).To(Equal(http.StatusOK), body)
		Expect(body).To(MatchJSON(`{"success":true,"accepted":1,"rejected":[
			{"index":0,"code":"unstorable_string","message":"a string holds \\u0000 or an unpaired UTF-16 surrogate, which Postgres cannot store"},
			{"index":1,"code":"invalid_utf8","message":"the message holds bytes that are not valid UTF-8"}]}`))
		code, body = r.post("/v1/track", globexKey, `{"userId":"u9","event":"Good","messageId":"good-globex"}`)
		Expect(code).To(Equal(http.StatusOK), body)

		Eventually(func(g Gomega) {
			g.Expect(query(ctx, dbURL, `select tenant, message_id from tally.events order by tenant, message_id`)).To(Equal([]map[string]any{
				{"tenant": "acme", "message_id": "good-acme"},
				{"tenant": "globex", "message_id": "good-globex"},
			}))
			users := query(ctx, dbURL, `select traits->>'plan' as plan, last_seen_at from tally.users where tenant = 'acme' and user_id = 'u1'`)
			g.Expect(users).To(HaveLen(1))
			g.Expect(users[0]["plan"]).To(Equal("pro"), "the current identify wins over the clamped one")
			g.Expect(users[0]["last_seen_at"]).To(BeTemporally("<", now.Add(time.Hour)), "last_seen_at is not in the future")
		}).WithContext(ctx).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
		Expect(query(ctx, dbURL, `select count(*) as n from tally.users where last_seen_at > now() + interval '1 day'`)).To(Equal([]map[string]any{{"n": int64(0)}}))
	})
})
