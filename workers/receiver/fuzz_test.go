package receiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// fuzzRoutes are the endpoints the fuzzer picks from.
var fuzzRoutes = []string{"/v1/batch", "/v1/track", "/v1/identify", "/v1/group", "/v1/page", "/v1/b", "/v1/t", "/v1/import"}

// FuzzRequestPath drives the whole request path with arbitrary bodies, as gzip or not: bytes in,
// the answer and the messages in JetStream out. Whatever the input, the answer is one of the
// statuses Segment clients understand with a JSON body, a refused request publishes nothing, and
// every published message is one the workers can read and Postgres can store.
//
//	go test ./workers/receiver/ -run '^$' -fuzz FuzzRequestPath -fuzztime 5m
func FuzzRequestPath(f *testing.F) {
	dir := f.TempDir()
	ns, err := natsserver.Start(natsserver.Options{StoreDir: dir})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		f.Fatal(err)
	}
	const key = "fuzz-key-0123456789abcdef0123456"
	src := &source.Config{Namespace: "fuzz", Name: "web", Tenant: "fuzz", WriteKeys: []string{key}, IgnoredEvents: []string{"Ignored"}}
	ctx := context.Background()
	if err := stream.Ensure(ctx, js, src.Stream(), src.StreamSettings()); err != nil {
		f.Fatal(err)
	}
	rcv, err := receiver.New(receiver.Options{JetStream: js, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, []*source.Config{src})
	if err != nil {
		f.Fatal(err)
	}
	handler := rcv.Handler()
	s, err := js.Stream(ctx, src.Stream().StreamName())
	if err != nil {
		f.Fatal(err)
	}
	lastSeq := func(t *testing.T) uint64 {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq
	}

	for _, seed := range []struct {
		route uint8
		gz    bool
		body  string
	}{
		{0, false, `{"batch":[{"type":"track","userId":"u","event":"E"},{"type":"identify","userId":"u","traits":{"a":1}}],"context":{"library":{"name":"x"}}}`},
		{0, true, `{"batch":[{"type":"track","userId":"u","event":"Ignored"},{"type":"group","userId":"u","groupId":7}]}`},
		{1, false, `{"userId":"u","event":"E","properties":{"p":"a\u0000b"}}`},
		{2, false, "{\"userId\":\"u\",\"traits\":{\"x\":\"\xff\"}}"},
		{0, false, `{"context":{"c":"` + strings.Repeat("c", 20000) + `"},"batch":[{"type":"track","userId":"u","event":"E","properties":{"p":"` + strings.Repeat("p", 13000) + `"}}]}`},
		{5, false, `{"batch":[{"type":"page","anonymousId":"a","name":"n","properties":` + strings.Repeat("[", 70) + strings.Repeat("]", 70) + `}]}`},
		{0, false, `{"batch":[` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `]}`},
		{6, false, `{"userId":"u","event":"E","timestamp":"2999-01-01T00:00:00Z"}`},
		{0, false, `{"batch":`}, {3, true, ``}, {7, false, `[]`},
	} {
		f.Add(seed.route, seed.gz, []byte(seed.body))
	}

	f.Fuzz(func(t *testing.T, route uint8, gz bool, body []byte) {
		path := fuzzRoutes[int(route)%len(fuzzRoutes)]
		from := lastSeq(t)
		sent := body
		if gz {
			sent = gzipped(body)
		}
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(string(sent)))
		req.SetBasicAuth(key, "")
		if gz {
			req.Header.Set("Content-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)

		var answer struct {
			Success  bool              `json:"success"`
			Code     string            `json:"code"`
			Accepted *int              `json:"accepted"`
			Rejected []json.RawMessage `json:"rejected"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
			t.Fatalf("status %d with a body that is not JSON: %q", rec.Code, rec.Body.String())
		}
		published := lastSeq(t) - from
		switch rec.Code {
		case http.StatusOK:
			if !answer.Success {
				t.Fatalf("200 without success: %s", rec.Body)
			}
		case http.StatusBadRequest, http.StatusUnsupportedMediaType:
			if answer.Success || answer.Code == "" {
				t.Fatalf("%d without an error code: %s", rec.Code, rec.Body)
			}
			if published != 0 {
				t.Fatalf("refused with %d but published %d messages", rec.Code, published)
			}
			return
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if answer.Accepted != nil && uint64(*answer.Accepted) != published {
			t.Fatalf("answered %d accepted, published %d", *answer.Accepted, published)
		}
		for seq := from + 1; seq <= from+published; seq++ {
			raw, err := s.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			var decoded any
			if err := json.Unmarshal(raw.Data, &decoded); err != nil {
				t.Fatalf("published invalid JSON: %v", err)
			}
			// fmt prints every key and string as is: a NUL in any of them shows.
			if len(raw.Data) > segment.MaxMessageBytes || !utf8.Valid(raw.Data) || strings.ContainsRune(fmt.Sprint(decoded), 0) {
				t.Fatalf("published a message Postgres cannot store or that is too large (%d bytes): %.200q", len(raw.Data), raw.Data)
			}
			m, err := segment.ParseNormalized(raw.Data)
			if err != nil {
				t.Fatalf("published a message the workers cannot read: %v", err)
			}
			if m.Type == segment.TypeTrack && m.Event == "Ignored" {
				t.Fatalf("published an ignored event")
			}
		}
	})
}
