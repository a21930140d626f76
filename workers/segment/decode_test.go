package segment

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeMessage checks that decodeMessage reads a message exactly as json.Unmarshal into a
// Message does: the same fields, and an error for the same inputs.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"track","messageId":"m1","userId":"u1","event":"Clicked","properties":{"plan":"pro"},` +
			`"context":{"groupId":"acme","active":false},"timestamp":"2026-03-01T12:00:00.123Z","receivedAt":"2026-03-01T12:00:01Z",` +
			`"originalTimestamp":"2026-03-01T12:00:00Z","sentAt":null,"integrations":{}}`,
		`{"type":"identify","messageId":"m2","anonymousId":"a\u00e9","traits":{"email":"ada@example.com"},"timestamp":"2026-03-01T12:00:00Z"}`,
		`{"TYPE":"group","MessageID":"m3","groupId":"g","traits":null,"userId":null,"userId":"late"}`,
		`{"type":"alias","previousId":"p","userId":"u","userId":"u2","sentAt":"2026-03-01T12:00:00Z","sentAt":null}`,
		`{"type":1}`, `{"userId":["x"]}`, `{"timestamp":"yesterday"}`, `{"timestamp":12}`, `{"context":[1,2]}`,
		`null`, ` null `, `[]`, `"track"`, `{}`, `{"type":"track",}`, `{"type":"tr\"ack"}`, "{\"event\":\"\xff\"}",
		`{"ſentAt":"2026-03-01T12:00:00Z","KEYS":1}`, `{"\u0074ype":"page","name":"Home","category":"Docs"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want, got Message
		wantErr := json.Unmarshal(data, &want)
		gotErr := decodeMessage(data, &got)
		if (gotErr != nil) != (wantErr != nil) {
			t.Fatalf("decodeMessage(%q): error %v, json.Unmarshal: %v", data, gotErr, wantErr)
		}
		if wantErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeMessage(%q) = %+v, json.Unmarshal = %+v", data, got, want)
		}
	})
}
