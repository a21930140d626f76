package segment

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzValidJSON checks that validJSON accepts exactly what json.Valid accepts.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{
		``, ` `, `{}`, `[]`, `{"a":1}`, `{"a":[1,2,{"b":null}],"c":"\u00e9\n"}`, `[1,]`, `{"a":1,}`, `{"a"}`,
		`-0.5e+10`, `01`, `1.`, `.5`, `-`, `1e`, `truex`, `nul`, `"\x"`, `"\u12G4"`, "\"\x01\"", "\"\xff\"",
		`[[[]]]`, `{"a":{"b":{}}}`, ` {"a" : 1 } `, `{} {}`, `"a"`, `[1 2]`, `{"a":1 "b":2}`, `{,}`, `[,1]`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := validJSON(data), json.Valid(data); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid = %v", data, got, want)
		}
	})
}
