package segment_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tallyhq/tally/workers/segment"
)

// FuzzDecodeRequest feeds arbitrary bodies to the decoder. It must never panic, and whatever it
// accepts must be a message the workers can read, carry the type and messageId it reported, hold
// no write key, fit in MaxMessageBytes as stored, and hold nothing Postgres refuses (invalid
// UTF-8, NUL, unpaired surrogates).
func FuzzDecodeRequest(f *testing.F) {
	seeds := []string{
		`{"batch":[{"type":"track","userId":"u","event":"E","writeKey":"k"}],"writeKey":"k","sentAt":"2024-05-01T10:00:00Z","context":{"library":{"name":"x"}}}`,
		`{"messageId":"b","sentAt":"2024-05-01T12:00:10.123456789+02:00","batch":[{"type":"identify","userId":42,"traits":{"company":{"id":7}},"timestamp":"2024-05-01T12:00:00+02:00"},{"type":"group","anonymousId":"a","groupId":1}],"context":{"library":{"name":"analytics-go","version":"3.0.0"}}}`,
		`{"userId":"u","event":"Clicked","properties":{"a":[1,2,{"b":null}]},"context":{"groupId":"g"},"integrations":{"All":true}}`,
		`{"type":"alias","userId":"u","previousId":"p","messageId":"` + strings.Repeat("m", 100) + `"}`,
		`{"batch":[{"type":"page","userId":"u","name":"n","category":"c","originalTimestamp":"2015-2-02T00:30:08.276Z","sentAt":"2015-02-02"}]}`,
		`{"user\u0049d":"u","UserId":{"x":1},"write\u004bey":"s","WRITEKEY":"s","event":"E","event":"F","type":"track"}`,
		`{"batch":[1,"x",null,[],{}],"context":[1],"integrations":"x","sentAt":5}`,
		`{"batch":[{"type":"track","userId":"u","event":"E","context":{"a":{"b":{"c":1}}}}],"context":{"a":{"b":{"d":2},"e":3}}}`,
		`{"type":"track","userId":"u","event":"E","messageId":"a\r\nb","timestamp":"0000-01-01T00:00:00-01:00"}`,
		`{"batch":[]}`, `{}`, `[]`, `{"batch":`, ``,
		`{"batch":[{"type":"track","userId":"u","event":"E","properties":{"p":"a\u0000b","q":"\ud83d\ude00","r":"\udc00"}}]}`,
		"{\"batch\":[{\"type\":\"track\",\"userId\":\"u\",\"event\":\"\xff\"}]}",
		`{"context":{"c":"` + strings.Repeat("c", 20000) + `"},"batch":[{"type":"track","userId":"u","event":"E","properties":{"p":"` + strings.Repeat("p", 13000) + `"}}]}`,
		`{"batch":[{"type":"track","userId":"u","event":"E","properties":` + strings.Repeat("[", 65) + strings.Repeat("]", 65) + `}]}`,
	}
	for i, s := range seeds {
		f.Add([]byte(s), uint8(i))
	}
	types := []string{"", "track", "identify", "group", "page", "screen", "alias"}
	f.Fuzz(func(t *testing.T, body []byte, endpoint uint8) {
		ep := segment.Endpoint{Batch: endpoint%2 == 0}
		if !ep.Batch {
			ep.Type = types[int(endpoint/2)%len(types)]
		}
		req, err := segment.ParseRequest(body, ep)
		if err != nil {
			if _, ok := err.(*segment.RequestError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		res := req.Normalize(time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC))
		if len(res.Accepted)+len(res.Rejected) != req.Len() {
			t.Fatalf("%d accepted + %d rejected != %d messages", len(res.Accepted), len(res.Rejected), req.Len())
		}
		for _, a := range res.Accepted {
			m, err := segment.ParseNormalized(a.JSON)
			if err != nil {
				t.Fatalf("accepted message does not re-parse: %v\n%s", err, a.JSON)
			}
			if m.Type != a.Type || m.MessageID != a.MessageID {
				t.Fatalf("reported type/messageId %q/%q, message holds %q/%q", a.Type, a.MessageID, m.Type, m.MessageID)
			}
			if ep.Type != "" && a.Type != ep.Type {
				t.Fatalf("endpoint %s accepted a %s", ep.Type, a.Type)
			}
			if a.Type == segment.TypeTrack && (m.Event == "" || m.Event != a.Event) {
				t.Fatalf("track event %q, reported %q", m.Event, a.Event)
			}
			if m.UserID == "" && m.AnonymousID == "" {
				t.Fatalf("accepted a message without user: %s", a.JSON)
			}
			if len(a.JSON) > segment.MaxMessageBytes {
				t.Fatalf("accepted a message of %d bytes", len(a.JSON))
			}
			if !utf8.Valid(a.JSON) {
				t.Fatalf("accepted invalid UTF-8: %q", a.JSON)
			}
			var decoded any
			if err := json.Unmarshal(a.JSON, &decoded); err != nil {
				t.Fatalf("not JSON: %v", err)
			}
			if s, ok := findUnstorable(decoded); ok {
				t.Fatalf("accepted a string Postgres refuses: %q in %s", s, a.JSON)
			}
			var top map[string]json.RawMessage
			if err := json.Unmarshal(a.JSON, &top); err != nil {
				t.Fatalf("not an object: %v", err)
			}
			for k := range top {
				if strings.EqualFold(k, "writeKey") {
					t.Fatalf("write key left in %s", a.JSON)
				}
			}
		}
	})
}

// findUnstorable finds a key or string holding NUL, which Postgres refuses. (Unpaired surrogate
// escapes decode to U+FFFD, which a sender may also send on purpose; the unit tests cover them.)
func findUnstorable(v any) (string, bool) {
	bad := func(s string) bool { return strings.ContainsRune(s, 0) }
	switch v := v.(type) {
	case string:
		return v, bad(v)
	case []any:
		for _, e := range v {
			if s, ok := findUnstorable(e); ok {
				return s, true
			}
		}
	case map[string]any:
		for k, e := range v {
			if bad(k) {
				return k, true
			}
			if s, ok := findUnstorable(e); ok {
				return s, true
			}
		}
	}
	return "", false
}
