package segment_test

// BenchmarkJSON asks whether the hand-written JSON scanner and validator (jsonscan.go, valid.go)
// earn their place on the receiver's hot path. It runs the same corpus through:
//
//   - handwritten:      what the receiver does per /v1/batch request (ParseRequest + Normalize);
//   - handwritten_scan: only the scanner/validator part of it: validate, split the batch into raw
//     message spans, read the top-level fields, and walk every message's members once
//     (ItemWriteKey walks them exactly as Normalize does, classifying each key);
//   - encoding_json:    json.Valid + json.Unmarshal into a batch struct of json.RawMessage, then a
//     json.Unmarshal of every message into a struct of the fields the receiver reads;
//   - gjson:            gjson.ValidBytes + GetBytes(body, "batch").ForEach with raw spans (Index)
//     + GetManyBytes of the same fields per message (the API as documented; it copies);
//   - gjson_zerocopy:   gjson at its best: one pass per object (ForEach with a key switch) over
//     an unsafe string view of the body, so no value is copied or looked up twice;
//   - fastjson:         a pooled fastjson.Parser (validates while parsing) + Get("batch") array +
//     GetStringBytes / Get of the same fields per message;
//   - fastjson_validate: the same after fastjson.ValidateBytes, because Parse alone accepts
//     invalid escapes and number syntax that json.Valid (and validJSON) refuse;
//   - fastjson_validate_marshal: the same, also serialising the four raw values again, because
//     fastjson keeps no raw spans and Normalize copies those values byte for byte.
//
// Every library reads the same fields: the top-level batch, sentAt, context, integrations and
// writeKey, and per message type, messageId, userId, anonymousId, groupId, event, timestamp,
// originalTimestamp, sentAt, writeKey (strings) and context, properties, traits, integrations
// (raw values). The library variants do not rewrite the message as Normalize does, so compare
// them with handwritten_scan; handwritten gives the full cost for reference.
//
// The corpus has the mix of `make bench` (hack/bench/load.go): 70% track, 20% identify, 10%
// group, 300-800-byte messages, 100 messages per batch body, generated from a fixed seed.
//
//	go test ./workers/segment/ -run '^$' -bench BenchmarkJSON -benchtime 2s -count 6

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/tidwall/gjson"
	"github.com/valyala/fastjson"

	"github.com/tallyhq/tally/workers/segment"
)

const (
	jsonBenchBodies    = 64
	jsonBenchBatchSize = 100
)

var (
	jbEvents    = []string{"Report Exported", "Dashboard Viewed", "Invite Sent", "Integration Connected", "Signed In", "Project Created", "Comment Added", "File Uploaded", "Search Performed", "Plan Upgraded"}
	jbPlans     = []string{"free", "starter", "pro", "enterprise"}
	jbBrowsers  = []string{"Chrome", "Firefox", "Safari", "Edge"}
	jbCountries = []string{"US", "DE", "FR", "GB", "BR", "IN", "JP"}
)

// benchMessage is one message shaped like hack/bench's generator makes them.
func benchMessage(rng *rand.Rand, req, seq int, base time.Time) map[string]any {
	id := fmt.Sprintf("r%08d-%08d-%08x", req, seq, rng.Uint32())
	user := rng.IntN(10000)
	userID := fmt.Sprintf("user-%05d", user)
	accountID := fmt.Sprintf("acct-%04d", user%1000)
	ts := base.Add(-time.Duration(rng.IntN(5000)) * time.Millisecond).UTC().Format("2006-01-02T15:04:05.000Z")
	ctx := map[string]any{
		"library":   map[string]any{"name": "analytics-node", "version": "3.1.0"},
		"ip":        fmt.Sprintf("10.%d.%d.%d", rng.IntN(256), rng.IntN(256), rng.IntN(256)),
		"userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) " + jbBrowsers[rng.IntN(len(jbBrowsers))] + "/120.0",
		"locale":    "en-US",
	}
	msg := map[string]any{"messageId": id, "userId": userID, "timestamp": ts, "context": ctx}
	switch r := rng.IntN(10); {
	case r < 7:
		msg["type"] = "track"
		msg["event"] = jbEvents[rng.IntN(len(jbEvents))]
		ctx["groupId"] = accountID
		props := map[string]any{
			"plan":     jbPlans[rng.IntN(len(jbPlans))],
			"count":    rng.IntN(1000),
			"duration": rng.Float64() * 100,
			"source":   map[string]any{"page": "/app/" + fmt.Sprint(rng.IntN(50)), "referrer": "https://example.test/"},
		}
		for i := 0; i < rng.IntN(6); i++ {
			props[fmt.Sprintf("attr_%d", i)] = fmt.Sprintf("value-%d-%d", i, rng.IntN(100000))
		}
		msg["properties"] = props
	case r < 9:
		msg["type"] = "identify"
		msg["traits"] = map[string]any{
			"email": userID + "@example.test", "name": "User " + userID,
			"plan": jbPlans[rng.IntN(len(jbPlans))], "logins": rng.IntN(500),
			"company": map[string]any{"id": accountID}, "address": map[string]any{"country": jbCountries[rng.IntN(len(jbCountries))]},
			"createdAt": "2024-01-02T03:04:05Z",
		}
	default:
		msg["type"] = "group"
		msg["groupId"] = accountID
		msg["traits"] = map[string]any{
			"name": "Account " + accountID, "plan": jbPlans[rng.IntN(len(jbPlans))],
			"employees": rng.IntN(5000), "mrr": rng.Float64() * 10000, "industry": "Software",
		}
	}
	return msg
}

// benchCorpus is a fixed set of /v1/batch bodies and their mean size.
func benchCorpus() ([][]byte, int) {
	rng := rand.New(rand.NewPCG(42, 42^0x9e3779b97f4a7c15))
	base := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	bodies := make([][]byte, jsonBenchBodies)
	total, seq := 0, 0
	for r := range bodies {
		items := make([]map[string]any, jsonBenchBatchSize)
		for i := range items {
			seq++
			items[i] = benchMessage(rng, r, seq, base)
		}
		body, err := json.Marshal(map[string]any{"batch": items, "sentAt": base.Format(time.RFC3339Nano)})
		if err != nil {
			panic(err)
		}
		bodies[r] = body
		total += len(body)
	}
	return bodies, total / len(bodies)
}

// digest is what every variant extracts from a body, so TestJSONLibsAgree can check they do the
// same work: the message count and the byte length of type + messageId + event.
type digest struct{ msgs, n int }

// --- hand-written ---------------------------------------------------------------------------

func handwrittenFull(body []byte, now time.Time) (digest, error) {
	req, err := segment.ParseRequest(body, segment.Endpoint{Batch: true})
	if err != nil {
		return digest{}, err
	}
	res := req.Normalize(now)
	if len(res.Rejected) > 0 {
		return digest{}, fmt.Errorf("rejected: %v", res.Rejected)
	}
	d := digest{msgs: len(res.Accepted)}
	for _, a := range res.Accepted {
		d.n += len(a.Type) + len(a.MessageID) + len(a.Event)
	}
	return d, nil
}

// handwrittenScan is ParseRequest (validJSON, the root object walk, the batch split, sentAt and
// writeKey) plus one walk of every message's members (objectIter + fieldOf, via ItemWriteKey).
func handwrittenScan(body []byte) (int, error) {
	req, err := segment.ParseRequest(body, segment.Endpoint{Batch: true})
	if err != nil {
		return 0, err
	}
	n := 0
	for i := 0; i < req.Len(); i++ {
		n += len(req.ItemWriteKey(i)) + 1
	}
	return n, nil
}

// --- encoding/json --------------------------------------------------------------------------

type ejBatch struct {
	Batch        []json.RawMessage `json:"batch"`
	SentAt       string            `json:"sentAt"`
	Context      json.RawMessage   `json:"context"`
	Integrations json.RawMessage   `json:"integrations"`
	WriteKey     string            `json:"writeKey"`
}

type ejMessage struct {
	Type              string          `json:"type"`
	MessageID         string          `json:"messageId"`
	UserID            string          `json:"userId"`
	AnonymousID       string          `json:"anonymousId"`
	GroupID           string          `json:"groupId"`
	Event             string          `json:"event"`
	Timestamp         string          `json:"timestamp"`
	OriginalTimestamp string          `json:"originalTimestamp"`
	SentAt            string          `json:"sentAt"`
	WriteKey          string          `json:"writeKey"`
	Context           json.RawMessage `json:"context"`
	Properties        json.RawMessage `json:"properties"`
	Traits            json.RawMessage `json:"traits"`
	Integrations      json.RawMessage `json:"integrations"`
}

// encodingJSON reuses its structs between calls (RawMessage buffers are then reused too), which
// is the cheapest way to use the package.
func encodingJSON(body []byte, batch *ejBatch, m *ejMessage) (digest, error) {
	if !json.Valid(body) {
		return digest{}, fmt.Errorf("invalid JSON")
	}
	*batch = ejBatch{Batch: batch.Batch[:0]}
	if err := json.Unmarshal(body, batch); err != nil {
		return digest{}, err
	}
	d := digest{msgs: len(batch.Batch)}
	for _, raw := range batch.Batch {
		*m = ejMessage{Context: m.Context[:0], Properties: m.Properties[:0], Traits: m.Traits[:0], Integrations: m.Integrations[:0]}
		if err := json.Unmarshal(raw, m); err != nil {
			return digest{}, err
		}
		d.n += len(m.Type) + len(m.MessageID) + len(m.Event)
	}
	return d, nil
}

// --- gjson ----------------------------------------------------------------------------------

var (
	topFields = []string{"sentAt", "context", "integrations", "writeKey"}
	msgFields = []string{"type", "messageId", "userId", "anonymousId", "groupId", "event", "timestamp",
		"originalTimestamp", "sentAt", "writeKey", "context", "properties", "traits", "integrations"}
)

func gjsonDocumented(body []byte) (digest, error) {
	if !gjson.ValidBytes(body) {
		return digest{}, fmt.Errorf("invalid JSON")
	}
	top := gjson.GetManyBytes(body, topFields...)
	batch := gjson.GetBytes(body, "batch")
	if !batch.IsArray() {
		return digest{}, fmt.Errorf("no batch")
	}
	_ = top
	var d digest
	batch.ForEach(func(_, v gjson.Result) bool {
		var span []byte
		if v.Index > 0 {
			span = body[v.Index : v.Index+len(v.Raw)] // the message's raw bytes, uncopied
		} else {
			span = []byte(v.Raw)
		}
		f := gjson.GetManyBytes(span, msgFields...)
		d.msgs++
		d.n += len(f[0].Str) + len(f[1].Str) + len(f[5].Str)
		return true
	})
	return d, nil
}

func gjsonZeroCopy(body []byte) (digest, error) {
	s := unsafe.String(unsafe.SliceData(body), len(body))
	if !gjson.Valid(s) {
		return digest{}, fmt.Errorf("invalid JSON")
	}
	var batch gjson.Result
	var top [4]gjson.Result
	gjson.Parse(s).ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "batch":
			batch = v
		case "sentAt":
			top[0] = v
		case "context":
			top[1] = v
		case "integrations":
			top[2] = v
		case "writeKey":
			top[3] = v
		}
		return true
	})
	if !batch.IsArray() {
		return digest{}, fmt.Errorf("no batch")
	}
	var d digest
	batch.ForEach(func(_, msg gjson.Result) bool {
		var f [14]gjson.Result
		msg.ForEach(func(k, v gjson.Result) bool {
			for i, name := range msgFields {
				if k.Str == name {
					f[i] = v
					break
				}
			}
			return true
		})
		d.msgs++
		d.n += len(f[0].Str) + len(f[1].Str) + len(f[5].Str)
		return true
	})
	return d, nil
}

// --- fastjson -------------------------------------------------------------------------------

var fastjsonPool fastjson.ParserPool

var (
	fjStrFields = msgFields[:10]
	fjRawFields = msgFields[10:]
)

// fastJSON parses with a pooled parser and reads the fields. Parse alone skips checks json.Valid
// makes (escape sequences, number syntax), so validate runs fastjson.ValidateBytes first, as a
// replacement of validJSON would have to. fastjson keeps no raw spans, so a non-nil buf has the
// raw values Normalize copies byte for byte (context, properties, traits, integrations)
// serialised again into it, as a replacement of the raw copies would have to.
func fastJSON(body []byte, validate bool, buf *[]byte) (digest, error) {
	if validate {
		if err := fastjson.ValidateBytes(body); err != nil {
			return digest{}, err
		}
	}
	p := fastjsonPool.Get()
	defer fastjsonPool.Put(p)
	v, err := p.ParseBytes(body)
	if err != nil {
		return digest{}, err
	}
	_ = v.GetStringBytes("sentAt")
	_ = v.Get("context")
	_ = v.Get("integrations")
	_ = v.GetStringBytes("writeKey")
	items, err := v.Get("batch").Array()
	if err != nil {
		return digest{}, err
	}
	var b []byte
	if buf != nil {
		b = (*buf)[:0]
	}
	d := digest{msgs: len(items)}
	for _, m := range items {
		var typ, id, event []byte
		for i, name := range fjStrFields {
			s := m.GetStringBytes(name)
			switch i {
			case 0:
				typ = s
			case 1:
				id = s
			case 5:
				event = s
			}
		}
		for _, name := range fjRawFields {
			if f := m.Get(name); f != nil && buf != nil {
				b = f.MarshalTo(b)
			}
		}
		d.n += len(typ) + len(id) + len(event)
	}
	if buf != nil {
		*buf = b
	}
	return d, nil
}

// --- benchmarks -----------------------------------------------------------------------------

// TestJSONLibsAgree checks that every variant reads the same messages from the corpus.
func TestJSONLibsAgree(t *testing.T) {
	bodies, _ := benchCorpus()
	var batch ejBatch
	var m ejMessage
	now := time.Now()
	types := map[string]int{}
	for i, body := range bodies {
		want, err := handwrittenFull(body, now)
		if err != nil {
			t.Fatal(err)
		}
		if want.msgs != jsonBenchBatchSize {
			t.Fatalf("body %d: %d messages", i, want.msgs)
		}
		for _, size := range segmentMessageSizes(t, body) {
			if size < 300 || size > 800 {
				t.Errorf("body %d: a message of %d bytes", i, size)
			}
		}
		gjson.ParseBytes(body).Get("batch.#.type").ForEach(func(_, v gjson.Result) bool {
			types[v.Str]++
			return true
		})
		for name, f := range map[string]func() (digest, error){
			"encoding_json":  func() (digest, error) { return encodingJSON(body, &batch, &m) },
			"gjson":          func() (digest, error) { return gjsonDocumented(body) },
			"gjson_zerocopy": func() (digest, error) { return gjsonZeroCopy(body) },
			"fastjson":       func() (digest, error) { return fastJSON(body, false, nil) },
			"fastjson_validate_marshal": func() (digest, error) {
				var buf []byte
				return fastJSON(body, true, &buf)
			},
		} {
			got, err := f()
			if err != nil || got != want {
				t.Fatalf("body %d, %s: got %+v, %v; want %+v", i, name, got, err, want)
			}
		}
		if n, err := handwrittenScan(body); err != nil || n != jsonBenchBatchSize {
			t.Fatalf("body %d, handwritten_scan: %d, %v", i, n, err)
		}
	}
	total := float64(len(bodies) * jsonBenchBatchSize)
	t.Logf("mix: %.0f%% track, %.0f%% identify, %.0f%% group", 100*float64(types["track"])/total,
		100*float64(types["identify"])/total, 100*float64(types["group"])/total)
}

func segmentMessageSizes(t *testing.T, body []byte) []int {
	var b struct{ Batch []json.RawMessage }
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatal(err)
	}
	sizes := make([]int, len(b.Batch))
	for i, raw := range b.Batch {
		sizes[i] = len(raw)
	}
	return sizes
}

func BenchmarkJSON(b *testing.B) {
	bodies, meanSize := benchCorpus()
	run := func(b *testing.B, f func(body []byte) (int, error)) {
		b.SetBytes(int64(meanSize))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			n, err := f(bodies[i%len(bodies)])
			if err != nil || n == 0 {
				b.Fatal(n, err)
			}
			i++
		}
		b.ReportMetric(float64(i*jsonBenchBatchSize)/b.Elapsed().Seconds(), "msgs/s")
	}
	b.Run("handwritten", func(b *testing.B) {
		run(b, func(body []byte) (int, error) {
			d, err := handwrittenFull(body, time.Now())
			return d.n, err
		})
	})
	b.Run("handwritten_scan", func(b *testing.B) { run(b, handwrittenScan) })
	b.Run("encoding_json", func(b *testing.B) {
		var batch ejBatch
		var m ejMessage
		run(b, func(body []byte) (int, error) {
			d, err := encodingJSON(body, &batch, &m)
			return d.n, err
		})
	})
	b.Run("gjson", func(b *testing.B) {
		run(b, func(body []byte) (int, error) {
			d, err := gjsonDocumented(body)
			return d.n, err
		})
	})
	b.Run("gjson_zerocopy", func(b *testing.B) {
		run(b, func(body []byte) (int, error) {
			d, err := gjsonZeroCopy(body)
			return d.n, err
		})
	})
	b.Run("fastjson", func(b *testing.B) {
		run(b, func(body []byte) (int, error) {
			d, err := fastJSON(body, false, nil)
			return d.n, err
		})
	})
	b.Run("fastjson_validate", func(b *testing.B) {
		run(b, func(body []byte) (int, error) {
			d, err := fastJSON(body, true, nil)
			return d.n, err
		})
	})
	b.Run("fastjson_validate_marshal", func(b *testing.B) {
		var buf []byte
		run(b, func(body []byte) (int, error) {
			d, err := fastJSON(body, true, &buf)
			return d.n, err
		})
	})
}

// TestJSONLibsDeepNesting is the other half of the comparison: a public endpoint must refuse a
// request that nests deeper than encoding/json allows (10,000) without recursing into it. A
// 500 KB body of brackets (the request limit) is refused by ParseRequest in constant stack, while
// the validators of gjson and fastjson, the two libraries that come within 15% on speed, accept
// it and recurse once per level (a 256 MB goroutine stack here: past a receiver's memory limit).
// If either library gains a depth bound, this test fails and the choice deserves a new look.
func TestJSONLibsDeepNesting(t *testing.T) {
	const depth = 250_000
	body := append(bytes.Repeat([]byte("["), depth), bytes.Repeat([]byte("]"), depth)...)
	if json.Valid(body) {
		t.Fatalf("encoding/json accepts %d levels: the validators' contract changed", depth)
	}

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	done := make(chan error)
	go func() { _, err := segment.ParseRequest(body, segment.Endpoint{Batch: true}); done <- err }()
	if err := <-done; err == nil {
		t.Fatalf("ParseRequest accepted %d levels of nesting", depth)
	}
	runtime.ReadMemStats(&after)
	if grown := int64(after.StackSys) - int64(before.StackSys); grown > 1<<20 {
		t.Errorf("refusing deep nesting grew the stacks by %d bytes", grown)
	}

	if !gjson.ValidBytes(body) {
		t.Errorf("gjson now refuses %d levels of nesting: reconsider it for the receiver", depth)
	}
	if fastjson.ValidateBytes(body) != nil {
		t.Errorf("fastjson now refuses %d levels of nesting: reconsider it for the receiver", depth)
	}
}
