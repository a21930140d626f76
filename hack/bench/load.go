package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"
)

// generator makes a realistic Segment mix: about 70% track, 20% identify, 10% group, over 10,000
// users in 1,000 accounts, 300-800 bytes each with nested properties, real-looking timestamps and
// messageIds. It is deterministic for a seed so runs are comparable.
type generator struct {
	rng      *rand.Rand
	prefix   string // keeps messageIds unique across phases
	seq      int
	users    int
	accounts int
}

func newGenerator(seed uint64, prefix string) *generator {
	return &generator{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), prefix: prefix, users: 10000, accounts: 1000}
}

var (
	eventNames = []string{"Report Exported", "Dashboard Viewed", "Invite Sent", "Integration Connected",
		"Signed In", "Project Created", "Comment Added", "File Uploaded", "Search Performed", "Plan Upgraded"}
	plans     = []string{"free", "starter", "pro", "enterprise"}
	browsers  = []string{"Chrome", "Firefox", "Safari", "Edge"}
	countries = []string{"US", "DE", "FR", "GB", "BR", "IN", "JP"}
)

// next returns the next message and its messageId.
func (g *generator) next() (map[string]any, string) {
	g.seq++
	id := fmt.Sprintf("%s-%08d-%08x", g.prefix, g.seq, g.rng.Uint32())
	user := g.rng.IntN(g.users)
	account := user % g.accounts // every user belongs to one account
	userID := fmt.Sprintf("user-%05d", user)
	accountID := fmt.Sprintf("acct-%04d", account)
	ts := time.Now().Add(-time.Duration(g.rng.IntN(5000)) * time.Millisecond).UTC().Format("2006-01-02T15:04:05.000Z")
	ctx := map[string]any{
		"library":   map[string]any{"name": "analytics-node", "version": "3.1.0"},
		"ip":        fmt.Sprintf("10.%d.%d.%d", g.rng.IntN(256), g.rng.IntN(256), g.rng.IntN(256)),
		"userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) " + browsers[g.rng.IntN(len(browsers))] + "/120.0",
		"locale":    "en-US",
	}
	msg := map[string]any{"messageId": id, "userId": userID, "timestamp": ts, "context": ctx}
	switch r := g.rng.IntN(10); {
	case r < 7:
		msg["type"] = "track"
		msg["event"] = eventNames[g.rng.IntN(len(eventNames))]
		ctx["groupId"] = accountID
		props := map[string]any{
			"plan":     plans[g.rng.IntN(len(plans))],
			"count":    g.rng.IntN(1000),
			"duration": g.rng.Float64() * 100,
			"source":   map[string]any{"page": "/app/" + fmt.Sprint(g.rng.IntN(50)), "referrer": "https://example.test/"},
		}
		for i := 0; i < g.rng.IntN(6); i++ {
			props[fmt.Sprintf("attr_%d", i)] = fmt.Sprintf("value-%d-%d", i, g.rng.IntN(100000))
		}
		msg["properties"] = props
	case r < 9:
		msg["type"] = "identify"
		msg["traits"] = map[string]any{
			"email":     userID + "@example.test",
			"name":      "User " + userID,
			"plan":      plans[g.rng.IntN(len(plans))],
			"logins":    g.rng.IntN(500),
			"company":   map[string]any{"id": accountID},
			"address":   map[string]any{"country": countries[g.rng.IntN(len(countries))]},
			"createdAt": "2024-01-02T03:04:05Z",
		}
	default:
		msg["type"] = "group"
		msg["groupId"] = accountID
		msg["traits"] = map[string]any{
			"name":      "Account " + accountID,
			"plan":      plans[g.rng.IntN(len(plans))],
			"employees": g.rng.IntN(5000),
			"mrr":       g.rng.Float64() * 10000,
			"industry":  "Software",
		}
	}
	return msg, id
}

// batchBody is a /v1/batch request of n messages, with the messageIds of its track calls (the
// ones that become event rows).
func (g *generator) batchBody(n int) ([]byte, []string) {
	items := make([]map[string]any, n)
	var tracks []string
	for i := range items {
		var id string
		items[i], id = g.next()
		if items[i]["type"] == "track" {
			tracks = append(tracks, id)
		}
	}
	body, _ := json.Marshal(map[string]any{"batch": items, "sentAt": time.Now().UTC().Format(time.RFC3339Nano)})
	return body, tracks
}

// single is one message for /v1/<type>.
func (g *generator) single() (string, []byte) {
	msg, _ := g.next()
	msg["sentAt"] = time.Now().UTC().Format(time.RFC3339Nano)
	body, _ := json.Marshal(msg)
	return msg["type"].(string), body
}
