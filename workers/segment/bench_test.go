package segment_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/workers/segment"
)

// realisticBatch is an analytics-go-shaped batch of n mixed messages.
func realisticBatch(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"messageId":"8c2e5cbb-5b1d-4b8a-9f46-2f9e0e4f1d11","sentAt":"2024-05-01T12:00:10.123456789+02:00","batch":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		switch i % 3 {
		case 0:
			fmt.Fprintf(&b, `{"type":"track","messageId":"m-%d","userId":"user-%d","event":"Report Exported","timestamp":"2024-05-01T12:00:09.5+02:00","context":{"groupId":"acct-%d"},"properties":{"format":"csv","rows":%d,"accountId":"acct-%d","plan":"enterprise"}}`, i, i%50, i%7, i*10, i%7)
		case 1:
			fmt.Fprintf(&b, `{"type":"identify","messageId":"m-%d","userId":"user-%d","timestamp":"2024-05-01T12:00:09.5+02:00","traits":{"email":"user%d@example.com","name":"User %d","company":{"id":%d,"name":"Acme"},"createdAt":"2023-01-01T00:00:00Z"}}`, i, i%50, i, i, i%7)
		default:
			fmt.Fprintf(&b, `{"type":"group","messageId":"m-%d","userId":"user-%d","groupId":"acct-%d","timestamp":"2024-05-01T12:00:09.5+02:00","traits":{"name":"Account %d","plan":"enterprise","employees":250}}`, i, i%50, i%7, i%7)
		}
	}
	b.WriteString(`],"context":{"library":{"name":"analytics-go","version":"3.0.0"}}}`)
	return []byte(b.String())
}

func BenchmarkDecodeNormalize100(b *testing.B) {
	body := realisticBatch(100)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req, err := segment.ParseRequest(body, segment.Endpoint{Batch: true})
		if err != nil {
			b.Fatal(err)
		}
		if res := req.Normalize(time.Now()); len(res.Accepted) != 100 {
			b.Fatal(res.Rejected)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkParseNormalized100 reads back what the receiver publishes for a 100-message batch,
// as a worker does: with the scanner (ParseNormalized) and, for comparison, json.Unmarshal.
func BenchmarkParseNormalized100(b *testing.B) {
	req, err := segment.ParseRequest(realisticBatch(100), segment.Endpoint{Batch: true})
	if err != nil {
		b.Fatal(err)
	}
	res := req.Normalize(time.Now())
	b.Run("scanner", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, a := range res.Accepted {
				if _, err := segment.ParseNormalized(a.JSON); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, a := range res.Accepted {
				var m segment.Message
				if err := json.Unmarshal(a.JSON, &m); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
