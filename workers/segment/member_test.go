package segment

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzMember checks that Member finds what decoding the whole object into a map finds, for the
// keys the workers read and a key of the input's own.
func FuzzMember(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `null`, `"active"`, ` {"active" : false } `, `{"active":true,"active":false}`,
		`{"\u0061ctive":false}`, `{"act\"ive":1,"active":2}`, `{"page":{"active":false}}`,
		`{"groupId":"acme","library":{"name":"analytics.js"},"ip":"1.2.3.4"}`, `{"groupId":42}`,
		`{"a":[1,{"active":false}],"groupId":null}`, `{"é":1}`,
	} {
		f.Add([]byte(s), "active")
		f.Add([]byte(s), "groupId")
		f.Add([]byte(s), "é")
	}
	f.Fuzz(func(t *testing.T, data []byte, key string) {
		var m map[string]json.RawMessage
		if !utf8.Valid(data) || !utf8.ValidString(key) || json.Unmarshal(data, &m) != nil {
			return // the receiver publishes valid JSON only; what encoding/json refuses compares with nothing
		}
		want, wantOK := m[key]
		got, ok := Member(data, key)
		if ok != wantOK || !bytes.Equal(got, want) {
			t.Fatalf("Member(%q, %q) = %q, %v; the decoded map has %q, %v", data, key, got, ok, want, wantOK)
		}
	})
}

func TestMemberOfNoObject(t *testing.T) {
	for _, s := range []string{``, `[{"active":false}]`, `"x"`, `null`} {
		if v, ok := Member([]byte(s), "active"); ok {
			t.Errorf("Member(%q) = %q, want none", s, v)
		}
	}
}
