package worker

import (
	"bytes"
	"cmp"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
)

// A batch is folded in Go before it touches Postgres: every entity the batch mentions becomes one
// row of changes carrying, per trait key, the value and version of the newest message that set it.
// Postgres then merges each row with what is stored using the same "newest version wins" rule, so
// the result is the same whichever way the messages were split into batches or ordered.

// traitSet is a versioned partial object: for each key, the newest value and its version; and the
// oldest and newest version of the messages that sent any key, which bound every version here.
type traitSet struct {
	values         map[string]json.RawMessage
	versions       map[string]string
	oldest, newest string
}

func (t *traitSet) merge(traits map[string]json.RawMessage, version string) {
	if len(traits) == 0 {
		return
	}
	if t.values == nil {
		t.values, t.versions = map[string]json.RawMessage{}, map[string]string{}
		t.oldest, t.newest = version, version
	}
	t.oldest, t.newest = min(t.oldest, version), max(t.newest, version)
	for k, v := range traits {
		if old, ok := t.versions[k]; ok && old >= version {
			continue
		}
		t.values[k], t.versions[k] = v, version
	}
}

// versionRange is the oldest and newest version of the messages that sent traits (nil, nil when
// none did).
func (t *traitSet) versionRange() (oldest, newest *string) {
	if t.values == nil {
		return nil, nil
	}
	return &t.oldest, &t.newest
}

// entityChange is what a batch does to one account or user.
type entityChange struct {
	ID     string
	Traits traitSet
	// Name and NameVersion: the newest non-empty name trait of a named call (accounts only).
	Name        string
	NameVersion string
	FirstAt     time.Time // oldest message about the entity: created_at is the minimum over all
	LastAt      time.Time // newest message about the entity: updated_at is the maximum over all
	SeenAt      time.Time // newest message that counts as activity (zero when none)
}

func (e *entityChange) touch(m *segment.Message, active bool) {
	e.FirstAt = minTime(e.FirstAt, m.Timestamp)
	e.LastAt = maxTime(e.LastAt, m.Timestamp)
	if active {
		e.SeenAt = maxTime(e.SeenAt, m.Timestamp)
	}
}

// linkOp is one link (group with userId, identify with company) or unlink (company.remove).
type linkOp struct {
	UserID    string
	AccountID string
	Version   string
	Linked    bool
	At        time.Time
}

// membershipChange is the batch's effect on one account_users row.
type membershipChange struct {
	AccountID, UserID string
	Newest            linkOp    // decides linked and changed_at
	LastAssociatedAt  time.Time // newest link; zero when the batch only unlinks
}

// eventRow is a track, page or screen as stored in tally.events.
type eventRow struct {
	MessageID   string
	Type        string
	Event       *string
	UserID      *string
	AnonymousID *string
	AccountID   *string // resolved from context.groupId or the account property; nil: from the user
	AccountFrom *string // "context", "property", or nil (resolved in Postgres from the user's associations)
	Properties  string
	Context     string
	Timestamp   time.Time
	ReceivedAt  time.Time
}

type aliasChange struct {
	PreviousID, UserID string
	FirstAt, LastAt    time.Time
}

// tieChange ties an anonymousId to a userId (identify with both, alias previousId to userId).
// An anonymousId keeps the tie of the oldest version, so two conflicting ties settle the same way
// in any order.
type tieChange struct {
	AnonymousID, UserID, Version string
}

// deletion is a user-deletion request: every message about the user of Version or older is void.
type deletion struct {
	UserID    string
	Version   string
	At        time.Time
	MessageID string
}

// folded is one batch, folded: each slice sorted by key so that concurrent transactions lock rows
// in the same order.
type folded struct {
	Accounts    []*entityChange
	Users       []*entityChange
	Links       []linkOp
	Memberships []*membershipChange
	Events      []eventRow
	Aliases     []*aliasChange
	Ties        []tieChange
	Deletes     []deletion // the newest per user

	// The ids a deletion could void (userIds and previousIds; anonymousIds of events without a
	// userId), looked up in the stored tombstones; and what is needed to fold the batch again
	// without the void messages.
	UserIDs, AnonymousIDs []string
	messages              []*segment.Message
	accountProperty       string
}

// withoutIgnored drops the source's ignored track events. The receiver drops them already; these
// are the ones accepted before the event was added to ignoredEvents, or re-driven from the
// dead-letter stream: an ignored event is never stored, whenever it was accepted.
func withoutIgnored(msgs []*segment.Message, src *source.Config) []*segment.Message {
	kept := msgs[:0:0]
	for _, m := range msgs {
		if m.Type == segment.TypeTrack && src.Ignores(m.Event) {
			continue
		}
		kept = append(kept, m)
	}
	return kept
}

// fold maps a batch of messages onto the changes it makes. accountProperty is the source's track
// property naming the account ("" for none).
func fold(msgs []*segment.Message, accountProperty string) *folded {
	return foldWithout(msgs, accountProperty, tombstones{})
}

// foldWithout folds the batch leaving out what the tombstones void.
func foldWithout(msgs []*segment.Message, accountProperty string, void tombstones) *folded {
	f := folder{
		void:        void,
		accounts:    map[string]*entityChange{},
		users:       map[string]*entityChange{},
		links:       map[[3]string]linkOp{},
		memberships: map[[2]string]*membershipChange{},
		events:      map[string]eventRow{},
		aliases:     map[[2]string]*aliasChange{},
		ties:        map[string]tieChange{},
		deletes:     map[string]deletion{},
		userIDs:     map[string]bool{},
		anonymous:   map[string]bool{},
	}
	for _, m := range msgs {
		f.add(m, accountProperty)
	}
	res := f.result()
	res.messages, res.accountProperty = msgs, accountProperty
	return res
}

type folder struct {
	void        tombstones
	accounts    map[string]*entityChange
	users       map[string]*entityChange
	links       map[[3]string]linkOp // user, account, version
	memberships map[[2]string]*membershipChange
	events      map[string]eventRow
	aliases     map[[2]string]*aliasChange
	ties        map[string]tieChange // by anonymousId
	deletes     map[string]deletion  // by userId
	// the ids looked up in the tombstones
	userIDs, anonymous map[string]bool
}

func (f *folder) add(m *segment.Message, accountProperty string) {
	// context.active false marks a call that must not bump "last seen" (Segment's spec).
	flag, _ := segment.Member(m.Context, "active")
	active := !isFalse(flag)
	f.noteIDs(m)
	// A message about a deleted user, as old as the deletion or older, is void: what it says
	// about the user is dropped; what it says about an account (group traits, a named company)
	// stays, as it would have stayed had it arrived before the deletion.
	voidUser := f.void.voidsUser(m.UserID, m)
	switch m.Type {
	case segment.TypeGroup:
		f.group(m, active, voidUser)
	case segment.TypeIdentify:
		f.identify(m, active, voidUser)
	case segment.TypeTrack, segment.TypePage, segment.TypeScreen:
		if !voidUser && !f.void.voidsAnonymousEvent(m) {
			f.event(m, accountProperty)
		}
	case segment.TypeAlias:
		if !voidUser && !f.void.voidsUser(m.PreviousID, m) {
			f.alias(m)
		}
	case segment.TypeDelete:
		f.delete(m)
	}
}

// noteIDs records the ids of m that a stored tombstone could void.
func (f *folder) noteIDs(m *segment.Message) {
	if m.UserID != "" {
		f.userIDs[m.UserID] = true
	} else if m.AnonymousID != "" {
		f.anonymous[m.AnonymousID] = true
	}
	if m.PreviousID != "" {
		f.userIDs[m.PreviousID] = true
	}
}

// delete keeps the newest deletion of each user.
func (f *folder) delete(m *segment.Message) {
	d := deletion{UserID: m.UserID, Version: versionOf(m), At: m.Timestamp, MessageID: m.MessageID}
	if old, ok := f.deletes[m.UserID]; !ok || d.Version > old.Version {
		f.deletes[m.UserID] = d
	}
}

func (f *folder) group(m *segment.Message, active, voidUser bool) {
	if m.GroupID == "" {
		return
	}
	accountID := m.GroupID
	traits := object(m.Traits)
	a := f.account(accountID)
	a.touch(m, active)
	a.Traits.merge(traits, versionOf(m))
	if name, ok := nonEmptyString(traits["name"]); ok {
		a.setName(name, versionOf(m))
	}
	if m.UserID != "" && !voidUser {
		f.user(m.UserID).touch(m, active)
		f.link(m, accountID, true)
	}
}

func (f *folder) identify(m *segment.Message, active, voidUser bool) {
	if m.UserID == "" {
		return // users are keyed on userId; an anonymous identify has nothing to attach to
	}
	traits := object(m.Traits)
	company := object(traits["company"])
	if !voidUser {
		f.tie(m.AnonymousID, m)
		u := f.user(m.UserID)
		u.touch(m, active)
		u.Traits.merge(withoutRemoveMarker(traits, company), versionOf(m))
	}

	accountID, ok := idFromJSON(company["id"])
	if !ok {
		return
	}
	if isTrueOrTrueString(company["remove"]) {
		if !voidUser {
			f.link(m, accountID, false)
		}
		return
	}
	if !voidUser {
		f.link(m, accountID, true)
	}
	// A named company creates or updates the account: its fields, name included, become account
	// traits, like a group call would; without a name the account is only linked, never created.
	if name, ok := nonEmptyString(company["name"]); ok {
		fields := make(map[string]json.RawMessage, len(company))
		for k, v := range company {
			if k != "id" && k != "remove" {
				fields[k] = v
			}
		}
		a := f.account(accountID)
		a.touch(m, active)
		a.Traits.merge(fields, versionOf(m))
		a.setName(name, versionOf(m))
	}
}

func (f *folder) event(m *segment.Message, accountProperty string) {
	if _, dup := f.events[m.MessageID]; dup {
		return
	}
	row := eventRow{
		MessageID:   m.MessageID,
		Type:        m.Type,
		UserID:      optional(m.UserID),
		AnonymousID: optional(m.AnonymousID),
		Properties:  jsonObjectText(m.Properties),
		Context:     jsonObjectText(m.Context),
		Timestamp:   m.Timestamp,
		ReceivedAt:  m.ReceivedAt,
	}
	if m.Type == segment.TypeTrack {
		row.Event = optional(m.Event)
	} else {
		row.Event = optional(m.Name) // page and screen: the event is the page or screen name
	}
	groupID, _ := segment.Member(m.Context, "groupId")
	if id, ok := idFromJSON(groupID); ok {
		row.AccountID, row.AccountFrom = &id, optional("context")
	} else if accountProperty != "" {
		if id, ok := pathValue(object(m.Properties), accountProperty); ok {
			row.AccountID, row.AccountFrom = &id, optional("property")
		}
	}
	f.events[m.MessageID] = row
}

func (f *folder) alias(m *segment.Message) {
	if m.UserID == "" || m.PreviousID == "" || m.UserID == m.PreviousID {
		return
	}
	key := [2]string{m.PreviousID, m.UserID}
	a, ok := f.aliases[key]
	if !ok {
		a = &aliasChange{PreviousID: m.PreviousID, UserID: m.UserID}
		f.aliases[key] = a
	}
	a.FirstAt = minTime(a.FirstAt, m.Timestamp)
	a.LastAt = maxTime(a.LastAt, m.Timestamp)
	f.tie(m.PreviousID, m)
}

// tie ties anonymousID to m's userId, keeping the oldest tie of each anonymousId.
func (f *folder) tie(anonymousID string, m *segment.Message) {
	if anonymousID == "" || m.UserID == "" || anonymousID == m.UserID {
		return
	}
	t := tieChange{AnonymousID: anonymousID, UserID: m.UserID, Version: versionOf(m)}
	if old, ok := f.ties[anonymousID]; !ok || t.Version < old.Version {
		f.ties[anonymousID] = t
	}
}

// withoutRemoveMarker is an identify's traits with company.remove left out: it is an instruction
// (unlink), not a fact about the user's company, so the stored company trait never carries it.
func withoutRemoveMarker(traits, company map[string]json.RawMessage) map[string]json.RawMessage {
	if _, ok := company["remove"]; !ok {
		return traits
	}
	company = maps.Clone(company)
	delete(company, "remove")
	encoded, err := json.Marshal(company)
	if err != nil {
		return traits // values decoded from valid JSON always encode again
	}
	traits = maps.Clone(traits)
	traits["company"] = encoded
	return traits
}

func (f *folder) account(id string) *entityChange {
	a, ok := f.accounts[id]
	if !ok {
		a = &entityChange{ID: id}
		f.accounts[id] = a
	}
	return a
}

func (f *folder) user(id string) *entityChange {
	u, ok := f.users[id]
	if !ok {
		u = &entityChange{ID: id}
		f.users[id] = u
	}
	return u
}

func (e *entityChange) setName(name, version string) {
	if version > e.NameVersion {
		e.Name, e.NameVersion = name, version
	}
}

func (f *folder) link(m *segment.Message, accountID string, linked bool) {
	op := linkOp{UserID: m.UserID, AccountID: accountID, Version: versionOf(m), Linked: linked, At: m.Timestamp}
	f.links[[3]string{op.UserID, op.AccountID, op.Version}] = op
	key := [2]string{accountID, m.UserID}
	mc, ok := f.memberships[key]
	if !ok {
		mc = &membershipChange{AccountID: accountID, UserID: m.UserID, Newest: op}
		f.memberships[key] = mc
	} else if op.Version > mc.Newest.Version {
		mc.Newest = op
	}
	if linked {
		mc.LastAssociatedAt = maxTime(mc.LastAssociatedAt, op.At)
	}
}

// result lists the changes in key order, so every worker writes rows in the same order (no
// deadlocks between concurrent transactions) and a batch's outcome does not depend on map order.
func (f *folder) result() *folded {
	return &folded{
		Accounts: slices.SortedFunc(maps.Values(f.accounts), func(a, b *entityChange) int { return strings.Compare(a.ID, b.ID) }),
		Users:    slices.SortedFunc(maps.Values(f.users), func(a, b *entityChange) int { return strings.Compare(a.ID, b.ID) }),
		Links: slices.SortedFunc(maps.Values(f.links), func(a, b linkOp) int {
			return cmp.Or(strings.Compare(a.UserID, b.UserID), strings.Compare(a.Version, b.Version), strings.Compare(a.AccountID, b.AccountID))
		}),
		Memberships: slices.SortedFunc(maps.Values(f.memberships), func(a, b *membershipChange) int {
			return cmp.Or(strings.Compare(a.AccountID, b.AccountID), strings.Compare(a.UserID, b.UserID))
		}),
		Events: slices.SortedFunc(maps.Values(f.events), func(a, b eventRow) int { return strings.Compare(a.MessageID, b.MessageID) }),
		Aliases: slices.SortedFunc(maps.Values(f.aliases), func(a, b *aliasChange) int {
			return cmp.Or(strings.Compare(a.PreviousID, b.PreviousID), strings.Compare(a.UserID, b.UserID))
		}),
		Ties:         slices.SortedFunc(maps.Values(f.ties), func(a, b tieChange) int { return strings.Compare(a.AnonymousID, b.AnonymousID) }),
		Deletes:      slices.SortedFunc(maps.Values(f.deletes), func(a, b deletion) int { return strings.Compare(a.UserID, b.UserID) }),
		UserIDs:      slices.Sorted(maps.Keys(f.userIDs)),
		AnonymousIDs: slices.Sorted(maps.Keys(f.anonymous)),
	}
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// jsonObjectText is raw when it is a JSON object and "{}" otherwise (absent or null). raw comes
// from a decoded message, so it is valid JSON: its first byte tells whether it is an object.
func jsonObjectText(raw json.RawMessage) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 || raw[0] != '{' {
		return "{}"
	}
	return string(raw)
}
