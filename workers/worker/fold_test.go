package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

// Pure folding logic: no Postgres, no NATS.
var _ = Describe("Folding a batch", func() {
	parse := func(ms ...msg) []*segment.Message {
		var out []*segment.Message
		for _, m := range ms {
			data, err := json.Marshal(m)
			Expect(err).NotTo(HaveOccurred())
			p, err := segment.ParseNormalized(data)
			Expect(err).NotTo(HaveOccurred())
			out = append(out, &p)
		}
		return out
	}
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }

	It("keeps per trait key the value of the newest message, ties broken by messageId, in any order", func() {
		a := identify("b", "u1", 10, map[string]any{"plan": "b-plan"})
		b := identify("a", "u1", 10, map[string]any{"plan": "a-plan", "seats": nil})
		c := identify("c", "u1", 5, map[string]any{"plan": "old", "email": "e"})
		for _, order := range [][]msg{{a, b, c}, {c, b, a}, {b, c, a}} {
			f := fold(parse(order...), "")
			Expect(f.Users).To(HaveLen(1))
			u := f.Users[0]
			Expect(u.Traits.values).To(Equal(map[string]json.RawMessage{"plan": raw(`"b-plan"`), "seats": raw(`null`), "email": raw(`"e"`)}))
			Expect(u.FirstAt).To(Equal(ts(5)))
			Expect(u.LastAt).To(Equal(ts(10)))
		}
	})

	It("bounds the trait versions by the oldest and newest call that sent traits, in any order", func() {
		older := identify("x", "u1", 5, map[string]any{"plan": "old"}) // overwritten, yet the oldest call
		newer := identify("y", "u1", 10, map[string]any{"plan": "new"})
		empty := identify("z", "u1", 20, map[string]any{}) // sends no trait: no bound
		for _, order := range [][]msg{{older, newer, empty}, {empty, newer, older}} {
			oldest, newest := fold(parse(order...), "").Users[0].Traits.versionRange()
			Expect(*oldest).To(Equal(versionOf(parse(older)[0])))
			Expect(*newest).To(Equal(versionOf(parse(newer)[0])))
		}
		oldest, newest := fold(parse(empty), "").Users[0].Traits.versionRange()
		Expect(oldest).To(BeNil())
		Expect(newest).To(BeNil())
	})

	It("names an account only from a named call, the newest one", func() {
		f := fold(parse(
			group("g1", "", "acme", 30, map[string]any{"plan": "x"}),
			group("g2", "", "acme", 20, map[string]any{"name": "Acme"}),
			group("g3", "", "acme", 10, map[string]any{"name": "Old Acme"}),
		), "")
		Expect(f.Accounts).To(HaveLen(1))
		Expect(f.Accounts[0].Name).To(Equal("Acme"))
	})

	It("turns a company with a name into account traits and a link, and company.remove into an unlink", func() {
		f := fold(parse(
			identify("i1", "u1", 10, map[string]any{"company": map[string]any{"id": 7.0, "name": "Seven", "plan": "pro"}}),
			identify("i2", "u1", 20, map[string]any{"company": map[string]any{"id": "7", "remove": true}}),
		), "")
		Expect(f.Accounts).To(HaveLen(1))
		Expect(f.Accounts[0].ID).To(Equal("7"))
		Expect(f.Accounts[0].Traits.values).To(Equal(map[string]json.RawMessage{"name": raw(`"Seven"`), "plan": raw(`"pro"`)}))
		Expect(f.Links).To(HaveLen(2))
		Expect(f.Memberships).To(HaveLen(1))
		Expect(f.Memberships[0].Newest.Linked).To(BeFalse())
		Expect(f.Memberships[0].LastAssociatedAt).To(Equal(ts(10)))
	})

	It("resolves a track's account from context.groupId, then the account property, else leaves it to Postgres", func() {
		f := fold(parse(
			track("t1", "u1", "E", 1, map[string]any{"acct": "p"}, map[string]any{"groupId": "c"}),
			track("t2", "u1", "E", 1, map[string]any{"acct": 12}, nil),
			track("t3", "u1", "E", 1, map[string]any{"other": "x"}, nil),
			track("t3", "u1", "E", 1, nil, nil), // the same messageId again within the batch
		), "acct")
		Expect(f.Events).To(HaveLen(3))
		Expect(*f.Events[0].AccountID).To(Equal("c"))
		Expect(*f.Events[0].AccountFrom).To(Equal("context"))
		Expect(*f.Events[1].AccountID).To(Equal("12"))
		Expect(*f.Events[1].AccountFrom).To(Equal("property"))
		Expect(f.Events[2].AccountID).To(BeNil())
	})

	It("ignores calls without the id they are keyed on", func() {
		f := fold(parse(
			msg{"type": "identify", "messageId": "i1", "anonymousId": "a1", "traits": map[string]any{"x": 1}, "timestamp": at(1), "receivedAt": at(1)},
			msg{"type": "group", "messageId": "g1", "userId": "u1", "timestamp": at(1), "receivedAt": at(1)},
			msg{"type": "alias", "messageId": "a1", "userId": "u1", "timestamp": at(1), "receivedAt": at(1)},
		), "")
		Expect(f.Users).To(BeEmpty())
		Expect(f.Accounts).To(BeEmpty())
		Expect(f.Aliases).To(BeEmpty())
	})

	DescribeTable("reads ids sent as strings or numbers",
		func(in string, want string, ok bool) {
			got, gotOK := idFromJSON(raw(in))
			Expect(gotOK).To(Equal(ok))
			Expect(got).To(Equal(want))
		},
		Entry("string", `"acct_1"`, "acct_1", true),
		Entry("integer", `12345`, "12345", true),
		Entry("integral float", `12345.0`, "12345", true),
		Entry("exponent", `1.2345e4`, "12345", true),
		Entry("fraction", `1.5`, "1.5", true),
		Entry("a string that looks like a number stays as sent (the receiver forwards numbers in integer form)", `"12345.0"`, "12345.0", true),
		Entry("exponent as a string", `"1e2"`, "1e2", true),
		Entry("fraction as a string", `"1.50"`, "1.50", true),
		Entry("leading zeros: not a JSON number", `"007"`, "007", true),
		Entry("digits and letters", `"12345abc"`, "12345abc", true),
		Entry("integer past float64's exact range", `12345678901234567890123`, "12345678901234567890123", true),
		Entry("blank string", `"  "`, "", false),
		Entry("null", `null`, "", false),
		Entry("object", `{"id":1}`, "", false),
		Entry("absent", ``, "", false),
	)

	It("orders versions by time first, then messageId", func() {
		m1 := &segment.Message{MessageID: "z", Timestamp: ts(1)}
		m2 := &segment.Message{MessageID: "a", Timestamp: ts(1).Add(time.Nanosecond)}
		m3 := &segment.Message{MessageID: "b", Timestamp: ts(1).Add(time.Nanosecond)}
		Expect(versionOf(m1) < versionOf(m2)).To(BeTrue())
		Expect(versionOf(m2) < versionOf(m3)).To(BeTrue())
	})
})

var _ = DescribeTable("Classifying a failed batch transaction",
	func(err error, want errorKind) { Expect(classify(err)).To(Equal(want)) },
	Entry("\\u0000 in jsonb", &pgconn.PgError{Code: "22P05"}, badData),
	Entry("numeric out of range", &pgconn.PgError{Code: "22003"}, badData),
	Entry("index row too large", &pgconn.PgError{Code: "54000"}, badData),
	Entry("our own encoding failure", fmt.Errorf("%w: x", errLocalData), badData),
	Entry("deadlock", &pgconn.PgError{Code: "40P01"}, contention),
	Entry("serialization failure", &pgconn.PgError{Code: "40001"}, contention),
	Entry("a lock wait past lock_timeout", &pgconn.PgError{Code: "55P03"}, contention),
	Entry("server shutting down", &pgconn.PgError{Code: "57P01"}, infrastructure),
	Entry("disk full", &pgconn.PgError{Code: "53100"}, infrastructure),
	Entry("a missing table (schema not migrated)", &pgconn.PgError{Code: "42P01"}, infrastructure),
	Entry("a revoked grant", &pgconn.PgError{Code: "42501"}, infrastructure),
	Entry("a failover's read-only primary", &pgconn.PgError{Code: "25006"}, infrastructure),
	Entry("connection refused", errors.New("dial tcp 127.0.0.1:5432: connect: connection refused"), infrastructure),
	Entry("a statement past statement_timeout", &pgconn.PgError{Code: "57014"}, unexplained),
	Entry("an internal error", &pgconn.PgError{Code: "XX000"}, unexplained),
)

var _ = It("classifies whatever the server says while connecting as infrastructure", func(ctx SpecContext) {
	cfg, err := pgconn.ParseConfig(databaseURL)
	Expect(err).NotTo(HaveOccurred())
	cfg.Database = "tally_no_such_database"
	_, err = pgconn.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	Expect(errors.As(err, &pgErr)).To(BeTrue(), "the server answered: %v", err)
	Expect(pgErr.Code).To(Equal("3D000"))
	Expect(classify(err)).To(Equal(infrastructure))
})

var _ = Describe("Event JSON columns", func() {
	It("keep an object as sent and store anything else as an empty object", func() {
		Expect(jsonObjectText(json.RawMessage(`{"a":1}`))).To(Equal(`{"a":1}`))
		Expect(jsonObjectText(json.RawMessage(" \n{}"))).To(Equal(" \n{}"[2:]))
		Expect(jsonObjectText(nil)).To(Equal("{}"))
		Expect(jsonObjectText(json.RawMessage("null"))).To(Equal("{}"))
		Expect(jsonObjectText(json.RawMessage(`[1]`))).To(Equal("{}"))
		Expect(jsonObjectText(json.RawMessage(`"x"`))).To(Equal("{}"))
	})
})
