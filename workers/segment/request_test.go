package segment_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

var (
	receivedAt = time.Date(2024, 5, 1, 10, 0, 11, 0, time.UTC)
	batch      = segment.Endpoint{Batch: true}
	track      = segment.Endpoint{Type: segment.TypeTrack}
	uuidV4     = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

func normalize(body string, ep segment.Endpoint) segment.Result {
	GinkgoHelper()
	req, err := segment.ParseRequest([]byte(body), ep)
	Expect(err).NotTo(HaveOccurred())
	return req.Normalize(receivedAt)
}

// only normalises a request expected to hold one valid message and returns it.
func only(body string, ep segment.Endpoint) segment.Accepted {
	GinkgoHelper()
	res := normalize(body, ep)
	Expect(res.Rejected).To(BeEmpty())
	Expect(res.Accepted).To(HaveLen(1))
	return res.Accepted[0]
}

// decoded reads a normalised message as generic JSON, numbers kept exact.
func decoded(a segment.Accepted) map[string]any {
	GinkgoHelper()
	dec := json.NewDecoder(bytes.NewReader(a.JSON))
	dec.UseNumber()
	var m map[string]any
	Expect(dec.Decode(&m)).To(Succeed())
	return m
}

func requestError(body string, ep segment.Endpoint) *segment.RequestError {
	GinkgoHelper()
	_, err := segment.ParseRequest([]byte(body), ep)
	var rerr *segment.RequestError
	Expect(errors.As(err, &rerr)).To(BeTrue(), "error %v", err)
	return rerr
}

var _ = Describe("Decoding a request", func() {
	Describe("a single-message endpoint", func() {
		It("takes the type from the path, stamps receivedAt and assigns a messageId", func() {
			a := only(`{"userId":"u1","event":"Clicked","properties":{"plan":"pro"}}`, track)
			Expect(a.Type).To(Equal("track"))
			Expect(a.Event).To(Equal("Clicked"))
			Expect(a.MessageID).To(MatchRegexp(uuidV4.String()))
			m, err := segment.ParseNormalized(a.JSON)
			Expect(err).NotTo(HaveOccurred())
			Expect(m.Type).To(Equal("track"))
			Expect(m.MessageID).To(Equal(a.MessageID))
			Expect(m.ReceivedAt).To(Equal(receivedAt))
			Expect(m.Timestamp).To(Equal(receivedAt))
			Expect(m.Properties).To(MatchJSON(`{"plan":"pro"}`))
		})

		It("accepts a body that repeats the path's type and refuses one that contradicts it", func() {
			Expect(only(`{"type":"track","userId":"u1","event":"E"}`, track).Type).To(Equal("track"))
			res := normalize(`{"type":"identify","userId":"u1"}`, track)
			Expect(res.Accepted).To(BeEmpty())
			Expect(res.Rejected).To(ConsistOf(HaveField("Code", segment.CodeTypeMismatch)))
		})

		It("keeps the messageId the client chose", func() {
			a := only(`{"userId":"u1","event":"E","messageId":"ajs-next-1714557600000-abc"}`, track)
			Expect(a.MessageID).To(Equal("ajs-next-1714557600000-abc"))
			Expect(decoded(a)["messageId"]).To(Equal("ajs-next-1714557600000-abc"))
		})

		It("copies every field it does not own byte for byte", func() {
			a := only(`{"userId":"u1","event":"E","version":2,"channel":"server","_metadata":{"nodeVersion":"v20","bundled":["x"]},"custom":[1,{"a":null}],"weird key \u00e9":"v\n"}`, track)
			Expect(string(a.JSON)).To(ContainSubstring(`"version":2`))
			Expect(string(a.JSON)).To(ContainSubstring(`"_metadata":{"nodeVersion":"v20","bundled":["x"]}`))
			Expect(string(a.JSON)).To(ContainSubstring(`"custom":[1,{"a":null}]`))
			Expect(string(a.JSON)).To(ContainSubstring(`"weird key \u00e9":"v\n"`))
		})

		It("reads the body's top-level writeKey for authentication and strips it from the message", func() {
			req, err := segment.ParseRequest([]byte(`{"writeKey":"wk-1","userId":"u1","event":"E"}`), track)
			Expect(err).NotTo(HaveOccurred())
			Expect(req.WriteKey).To(Equal("wk-1"))
			a := req.Normalize(receivedAt).Accepted[0]
			Expect(string(a.JSON)).NotTo(ContainSubstring("wk-1"))
			Expect(decoded(a)).NotTo(HaveKey("writeKey"))
		})
	})

	Describe("a batch", func() {
		It("splits the batch and normalises every message on its own", func() {
			res := normalize(`{"batch":[
				{"type":"identify","userId":"u1","traits":{"email":"a@b.c"}},
				{"type":"group","userId":"u1","groupId":"acc1","traits":{"name":"Acme"}},
				{"type":"track","anonymousId":"anon","event":"Clicked"},
				{"type":"page","userId":"u1","name":"Home","category":"Docs"},
				{"type":"screen","userId":"u1","name":"Settings"},
				{"type":"alias","userId":"u1","previousId":"anon"}]}`, batch)
			Expect(res.Rejected).To(BeEmpty())
			var types []string
			for i, a := range res.Accepted {
				Expect(a.Index).To(Equal(i))
				_, err := segment.ParseNormalized(a.JSON)
				Expect(err).NotTo(HaveOccurred())
				types = append(types, a.Type)
			}
			Expect(types).To(Equal([]string{"identify", "group", "track", "page", "screen", "alias"}))
			Expect(res.Accepted[2].Event).To(Equal("Clicked"))
		})

		It("merges the batch context into each message, the message's own values winning", func() {
			// analytics-go puts context.library only at the batch level.
			res := normalize(`{"context":{"library":{"name":"analytics-go","version":"3.0.0"},"ip":"10.0.0.1","locale":"en-US"},
				"batch":[
				{"type":"track","userId":"u1","event":"E","context":{"groupId":"acc1","ip":"192.0.2.7","library":{"name":"custom"}}},
				{"type":"track","userId":"u1","event":"E"},
				{"type":"track","userId":"u1","event":"E","context":null}]}`, batch)
			Expect(res.Accepted).To(HaveLen(3))
			m, err := segment.ParseNormalized(res.Accepted[0].JSON)
			Expect(err).NotTo(HaveOccurred())
			Expect(m.Context).To(MatchJSON(`{"groupId":"acc1","ip":"192.0.2.7","library":{"name":"custom","version":"3.0.0"},"locale":"en-US"}`))
			for _, a := range res.Accepted[1:] {
				m, _ := segment.ParseNormalized(a.JSON)
				Expect(m.Context).To(MatchJSON(`{"library":{"name":"analytics-go","version":"3.0.0"},"ip":"10.0.0.1","locale":"en-US"}`))
			}
		})

		It("merges batch integrations the same way", func() {
			a := normalize(`{"integrations":{"All":true,"Salesforce":false},"batch":[{"type":"track","userId":"u","event":"E","integrations":{"Salesforce":true,"Vitally":{"x":1}}}]}`, batch).Accepted[0]
			m, _ := segment.ParseNormalized(a.JSON)
			Expect(m.Integrations).To(MatchJSON(`{"All":true,"Salesforce":true,"Vitally":{"x":1}}`))
		})

		It("strips writeKey from the batch and from every message", func() {
			req, err := segment.ParseRequest([]byte(`{"writeKey":"root-key","batch":[{"type":"track","userId":"u","event":"E","writeKey":"item-key"}]}`), batch)
			Expect(err).NotTo(HaveOccurred())
			Expect(req.WriteKey).To(Equal("root-key"))
			Expect(req.ItemWriteKey(0)).To(Equal("item-key"))
			a := req.Normalize(receivedAt).Accepted[0]
			Expect(string(a.JSON)).NotTo(ContainSubstring("key"))
		})

		It("ignores batch-level fields that are not message defaults", func() {
			// analytics-go sends a batch messageId; classic analytics-node a batch timestamp.
			a := normalize(`{"messageId":"batch-id","timestamp":"2001-01-01T00:00:00Z","batch":[{"type":"track","userId":"u","event":"E"}]}`, batch).Accepted[0]
			Expect(a.MessageID).NotTo(Equal("batch-id"))
			m, _ := segment.ParseNormalized(a.JSON)
			Expect(m.Timestamp).To(Equal(receivedAt))
		})

		It("accepts the valid messages and reports the invalid ones by index", func() {
			res := normalize(`{"batch":[
				{"type":"track","userId":"u","event":"ok-0"},
				{"type":"track","userId":"u"},
				{"type":"track","userId":"u","event":"ok-2"},
				"not an object",
				{"userId":"u","event":"no type"}]}`, batch)
			Expect(res.Accepted).To(HaveLen(2))
			Expect(res.Accepted[0].Index).To(Equal(0))
			Expect(res.Accepted[1].Index).To(Equal(2))
			Expect(res.Rejected).To(Equal([]segment.Rejection{
				{Index: 1, Code: segment.CodeEventNotDefined, Message: "a track call needs an event name"},
				{Index: 3, Code: segment.CodeMessageNotObject, Message: "a message must be a JSON object"},
				{Index: 4, Code: segment.CodeTypeRequired, Message: "a batch message needs a type"},
			}))
		})

		It("accepts an empty batch", func() {
			res := normalize(`{"batch":[]}`, batch)
			Expect(res.Accepted).To(BeEmpty())
			Expect(res.Rejected).To(BeEmpty())
		})
	})

	Describe("ids", func() {
		It("turns numeric ids into strings and leaves traits.company.id alone", func() {
			a := normalize(`{"batch":[{"type":"group","userId":42,"anonymousId":7.5,"groupId":1234567890123456789012,"traits":{"company":{"id":99}}},
				{"type":"alias","userId":1,"previousId":-2}]}`, batch)
			Expect(a.Rejected).To(BeEmpty())
			g := decoded(a.Accepted[0])
			Expect(g["userId"]).To(Equal("42"))
			Expect(g["anonymousId"]).To(Equal("7.5"))
			Expect(g["groupId"]).To(Equal("1234567890123456789012"))
			Expect(g["traits"]).To(Equal(map[string]any{"company": map[string]any{"id": json.Number("99")}}))
			al := decoded(a.Accepted[1])
			Expect(al["userId"]).To(Equal("1"))
			Expect(al["previousId"]).To(Equal("-2"))
		})

		It("takes a numeric messageId as a string", func() {
			a := only(`{"userId":"u","event":"E","messageId":12345}`, track)
			Expect(a.MessageID).To(Equal("12345"))
			Expect(decoded(a)["messageId"]).To(Equal("12345"))
		})

		It("counts an empty-string id as absent", func() {
			a := only(`{"userId":"","anonymousId":"anon","event":"E"}`, track)
			Expect(decoded(a)).NotTo(HaveKey("userId"))
		})
	})

	DescribeTable("refuses messages Segment discards at ingest",
		func(message, code string) {
			res := normalize(`{"batch":[`+message+`]}`, batch)
			Expect(res.Accepted).To(BeEmpty())
			Expect(res.Rejected).To(HaveLen(1))
			Expect(res.Rejected[0].Code).To(Equal(code))
			Expect(res.Rejected[0].Message).NotTo(BeEmpty())
		},
		Entry("no user", `{"type":"track","event":"E"}`, segment.CodeIDRequired),
		Entry("null ids", `{"type":"identify","userId":null,"anonymousId":null}`, segment.CodeIDRequired),
		Entry("object userId", `{"type":"identify","userId":{"id":1}}`, segment.CodeIDNotString),
		Entry("boolean anonymousId", `{"type":"identify","anonymousId":true}`, segment.CodeIDNotString),
		Entry("array groupId", `{"type":"group","userId":"u","groupId":["a"]}`, segment.CodeIDNotString),
		Entry("track without event", `{"type":"track","userId":"u"}`, segment.CodeEventNotDefined),
		Entry("track with empty event", `{"type":"track","userId":"u","event":""}`, segment.CodeEventNotDefined),
		Entry("track with numeric event", `{"type":"track","userId":"u","event":5}`, segment.CodeEventNotString),
		Entry("group without groupId", `{"type":"group","userId":"u","traits":{}}`, segment.CodeGroupIDRequired),
		Entry("alias without userId", `{"type":"alias","anonymousId":"a","previousId":"p"}`, segment.CodeUserIDRequired),
		Entry("alias without previousId", `{"type":"alias","userId":"u"}`, segment.CodePreviousIDRequired),
		Entry("traits not an object", `{"type":"identify","userId":"u","traits":"vip"}`, segment.CodeTraitsNotObject),
		Entry("traits an array", `{"type":"identify","userId":"u","traits":[1]}`, segment.CodeTraitsNotObject),
		Entry("properties not an object", `{"type":"track","userId":"u","event":"E","properties":[]}`, segment.CodePropertiesNotObject),
		Entry("context not an object", `{"type":"track","userId":"u","event":"E","context":"x"}`, segment.CodeContextNotObject),
		Entry("integrations not an object", `{"type":"track","userId":"u","event":"E","integrations":true}`, segment.CodeIntegrationsNotObject),
		Entry("page name not a string", `{"type":"page","userId":"u","name":1}`, segment.CodeNameNotString),
		Entry("screen category not a string", `{"type":"screen","userId":"u","category":{}}`, segment.CodeCategoryNotString),
		Entry("messageId an object", `{"type":"track","userId":"u","event":"E","messageId":{}}`, segment.CodeMessageIDNotString),
		Entry("messageId over 100 characters", `{"type":"track","userId":"u","event":"E","messageId":"`+strings.Repeat("m", 101)+`"}`, segment.CodeMessageIDTooLong),
		Entry("messageId with a line break", `{"type":"track","userId":"u","event":"E","messageId":"a\r\nNats-Msg-Id: b"}`, segment.CodeMessageIDInvalid),
		Entry("unknown type", `{"type":"purchase","userId":"u"}`, segment.CodeTypeInvalid),
		Entry("type not a string", `{"type":1,"userId":"u"}`, segment.CodeTypeInvalid),
		Entry("no type in a batch", `{"userId":"u","event":"E"}`, segment.CodeTypeRequired),
		Entry("a message that is not an object", `[1,2]`, segment.CodeMessageNotObject),
	)

	It("accepts a messageId of exactly 100 characters", func() {
		id := strings.Repeat("é", 100) // characters, not bytes
		Expect(only(`{"userId":"u","event":"E","messageId":"`+id+`"}`, track).MessageID).To(Equal(id))
	})

	It("drops keys that differ from Segment's fields only in case, which would confuse decoders", func() {
		a := only(`{"userId":"u","event":"E","UserId":{"x":1},"TIMESTAMP":"garbage","WriteKey":"secret"}`, track)
		m := decoded(a)
		Expect(m).NotTo(HaveKey("UserId"))
		Expect(m).NotTo(HaveKey("TIMESTAMP"))
		Expect(m).NotTo(HaveKey("WriteKey"))
		Expect(m["userId"]).To(Equal("u"))
	})

	It("reads escaped keys as what they spell", func() {
		a := only(`{"user\u0049d":"u","event":"E","write\u004bey":"secret"}`, track)
		Expect(decoded(a)["userId"]).To(Equal("u"))
		Expect(string(a.JSON)).NotTo(ContainSubstring("secret"))
	})

	It("takes the last of duplicated keys, as JSON decoders do", func() {
		a := only(`{"userId":"first","userId":"second","event":"E"}`, track)
		Expect(decoded(a)["userId"]).To(Equal("second"))
		Expect(strings.Count(string(a.JSON), `"userId"`)).To(Equal(1))
	})

	Describe("timestamps", func() {
		parse := func(a segment.Accepted) segment.Message {
			GinkgoHelper()
			m, err := segment.ParseNormalized(a.JSON)
			Expect(err).NotTo(HaveOccurred())
			return m
		}

		It("corrects the client clock: timestamp = receivedAt − (sentAt − originalTimestamp), with batch-level sentAt", func() {
			// The client's clock is 1 h fast; the event happened 10 s before the request.
			a := normalize(`{"sentAt":"2024-05-01T11:00:10Z","batch":[{"type":"track","userId":"u","event":"E","timestamp":"2024-05-01T11:00:00Z"}]}`, batch).Accepted[0]
			m := parse(a)
			Expect(m.Timestamp).To(Equal(receivedAt.Add(-10 * time.Second)))
			Expect(*m.OriginalTimestamp).To(Equal(time.Date(2024, 5, 1, 11, 0, 0, 0, time.UTC)))
			Expect(*m.SentAt).To(Equal(time.Date(2024, 5, 1, 11, 0, 10, 0, time.UTC)))
			Expect(m.ReceivedAt).To(Equal(receivedAt))
		})

		It("uses a per-message sentAt and originalTimestamp (browser standard mode)", func() {
			a := only(`{"userId":"u","event":"E","originalTimestamp":"2024-05-01T09:59:59.5Z","sentAt":"2024-05-01T10:00:00Z"}`, track)
			Expect(parse(a).Timestamp).To(Equal(receivedAt.Add(-500 * time.Millisecond)))
		})

		It("prefers the message's own sentAt over the batch's", func() {
			a := normalize(`{"sentAt":"2030-01-01T00:00:00Z","batch":[{"type":"track","userId":"u","event":"E","timestamp":"2024-05-01T10:00:00Z","sentAt":"2024-05-01T10:00:01Z"}]}`, batch).Accepted[0]
			Expect(parse(a).Timestamp).To(Equal(receivedAt.Add(-time.Second)))
		})

		It("handles analytics-go's nanosecond local-offset timestamps", func() {
			a := normalize(`{"sentAt":"2024-05-01T12:00:10.000000001+02:00","batch":[{"type":"identify","userId":"u","timestamp":"2024-05-01T12:00:09.000000001+02:00"}]}`, batch).Accepted[0]
			m := parse(a)
			Expect(m.Timestamp).To(Equal(receivedAt.Add(-time.Second)))
			Expect(string(a.JSON)).To(ContainSubstring(`"originalTimestamp":"2024-05-01T10:00:09.000000001Z"`))
		})

		It("keeps the given timestamp when there is no usable sentAt (historical imports)", func() {
			for _, sentAt := range []string{``, `,"sentAt":"not a date"`, `,"sentAt":12}`} {
				a := only(`{"userId":"u","event":"E","timestamp":"2019-06-01T00:00:00Z"`+strings.TrimSuffix(sentAt, "}")+`}`, track)
				m := parse(a)
				Expect(m.Timestamp).To(Equal(time.Date(2019, 6, 1, 0, 0, 0, 0, time.UTC)), "sentAt %q", sentAt)
				Expect(m.SentAt).To(BeNil())
			}
		})

		It("stamps receivedAt as the timestamp when the client sent none", func() {
			m := parse(only(`{"userId":"u","event":"E","sentAt":"2024-05-01T10:00:00Z"}`, track))
			Expect(m.Timestamp).To(Equal(receivedAt))
			Expect(m.OriginalTimestamp).To(BeNil())
		})

		It("treats an unparseable timestamp as absent", func() {
			m := parse(only(`{"userId":"u","event":"E","timestamp":"soon"}`, track))
			Expect(m.Timestamp).To(Equal(receivedAt))
		})

		It("reads malformed but recognisable dates from Segment's docs", func() {
			m := parse(only(`{"userId":"u","event":"E","timestamp":"2015-2-02T00:30:08.276Z"}`, track))
			Expect(m.Timestamp).To(Equal(time.Date(2015, 2, 2, 0, 30, 8, 276e6, time.UTC)))
		})

		It("replaces a client-sent receivedAt with its own", func() {
			m := parse(only(`{"userId":"u","event":"E","receivedAt":"1999-01-01T00:00:00Z"}`, track))
			Expect(m.ReceivedAt).To(Equal(receivedAt))
		})

		It("falls back to the client's time when the correction leaves the years RFC 3339 can write", func() {
			a := only(`{"userId":"u","event":"E","timestamp":"0001-01-01T00:00:01Z","sentAt":"9999-01-01T00:00:00Z"}`, track)
			Expect(parse(a).Timestamp).To(Equal(time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC)))
		})

		It("treats Go's zero time, what a Go client sends for an unset time, as absent", func() {
			m := parse(only(`{"userId":"u","event":"E","timestamp":"0001-01-01T00:00:00Z"}`, track))
			Expect(m.Timestamp).To(Equal(receivedAt))
			Expect(m.OriginalTimestamp).To(BeNil())
		})
	})

	Describe("request-level errors", func() {
		It("refuses invalid JSON", func() {
			Expect(requestError(`{"batch":[`, batch).Code).To(Equal(segment.CodeInvalidJSON))
			Expect(requestError(``, track).Code).To(Equal(segment.CodeInvalidJSON))
		})

		It("reads a body that starts with a UTF-8 byte-order mark", func() {
			Expect(only("\xEF\xBB\xBF"+`{"userId":"u","event":"E"}`, track).Event).To(Equal("E"))
		})

		It("refuses a body that is not an object", func() {
			Expect(requestError(`[{"type":"track"}]`, batch).Code).To(Equal(segment.CodeInvalidJSON))
			Expect(requestError(`"x"`, track).Code).To(Equal(segment.CodeInvalidJSON))
		})

		It("refuses a batch request without a batch array", func() {
			Expect(requestError(`{"type":"track","userId":"u","event":"E"}`, batch).Code).To(Equal(segment.CodeInvalidBatch))
			Expect(requestError(`{"batch":{"type":"track"}}`, batch).Code).To(Equal(segment.CodeInvalidBatch))
		})

		It("refuses more than 2500 messages", func() {
			items := strings.Repeat(`{"type":"track","userId":"u","event":"E"},`, 2501)
			Expect(requestError(`{"batch":[`+strings.TrimSuffix(items, ",")+`]}`, batch).Code).To(Equal(segment.CodeTooManyMessages))
			items = strings.Repeat(`{"type":"track","userId":"u","event":"E"},`, 2500)
			req, err := segment.ParseRequest([]byte(`{"batch":[`+strings.TrimSuffix(items, ",")+`]}`), batch)
			Expect(err).NotTo(HaveOccurred())
			Expect(req.Len()).To(Equal(2500))
		})

		It("refuses a single call over 32 KB", func() {
			big := `{"type":"track","userId":"u","event":"E","properties":{"p":"` + strings.Repeat("x", segment.MaxMessageBytes) + `"}}`
			Expect(requestError(big, track).Code).To(Equal(segment.CodeMessageTooLarge))
		})

		It("refuses a request over 500 KB", func() {
			item := `{"type":"track","userId":"u","event":"E","properties":{"p":"` + strings.Repeat("x", 20000) + `"}}`
			items := strings.TrimSuffix(strings.Repeat(item+",", 26), ",")
			Expect(requestError(`{"batch":[`+items+`]}`, batch).Code).To(Equal(segment.CodeRequestTooLarge))
		})
	})

	It("assigns a distinct messageId to every message without one", func() {
		items := strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u","event":"E"},`, 100), ",")
		seen := map[string]bool{}
		for _, a := range normalize(`{"batch":[`+items+`]}`, batch).Accepted {
			Expect(a.MessageID).To(MatchRegexp(uuidV4.String()))
			seen[a.MessageID] = true
		}
		Expect(seen).To(HaveLen(100))
	})

	It("gives a timestamped message without messageId the same id when a client retries it", func() {
		body := `{"batch":[{"type":"track","userId":"u","event":"E","timestamp":"2024-05-01T10:00:00Z"},` +
			`{"type":"track","userId":"u","event":"E","timestamp":"2024-05-01T10:00:01Z"}]}`
		first, retry := normalize(body, batch).Accepted, normalize(body, batch).Accepted
		Expect(first[0].MessageID).To(Equal(retry[0].MessageID), "a retry dedupes instead of storing the event twice")
		Expect(first[1].MessageID).To(Equal(retry[1].MessageID))
		Expect(first[0].MessageID).NotTo(Equal(first[1].MessageID), "different occurrences keep different ids")
		Expect(first[0].MessageID).To(MatchRegexp(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`))
	})

	It("writes messages that ParseNormalized reads back with the same fields", func() {
		a := only(`{"userId":"u","anonymousId":"a","event":"Signed Up","name":"n","category":"c","traits":{"t":1},"properties":{"p":2},"context":{"groupId":"g"},"integrations":{"All":false}}`, track)
		m, err := segment.ParseNormalized(a.JSON)
		Expect(err).NotTo(HaveOccurred())
		Expect(fmt.Sprint(m.UserID, m.AnonymousID, m.Event, m.Name, m.Category)).To(Equal("uaSigned Upnc"))
		Expect(m.Traits).To(MatchJSON(`{"t":1}`))
		Expect(m.Properties).To(MatchJSON(`{"p":2}`))
		Expect(m.Context).To(MatchJSON(`{"groupId":"g"}`))
		Expect(m.Integrations).To(MatchJSON(`{"All":false}`))
	})
})
