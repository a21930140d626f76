package worker

import "github.com/tallyhq/tally/workers/segment"

// tombstones are the deletions in force for a batch: userId, and anonymousId of a deleted user,
// to the version of the deletion. A message about one of them of that version or older is void.
type tombstones struct {
	users, anonymous map[string]string
}

func (t tombstones) empty() bool { return len(t.users) == 0 && len(t.anonymous) == 0 }

// voidsUser: id is a deleted user and m is not newer than the deletion.
func (t tombstones) voidsUser(id string, m *segment.Message) bool {
	d, ok := t.users[id]
	return ok && id != "" && versionOf(m) <= d
}

// voidsAnonymousEvent: m is an event without a userId whose anonymousId was tied to a deleted
// user, and it is not newer than the deletion.
func (t tombstones) voidsAnonymousEvent(m *segment.Message) bool {
	if m.UserID != "" || m.AnonymousID == "" {
		return false
	}
	d, ok := t.anonymous[m.AnonymousID]
	return ok && versionOf(m) <= d
}

// voidsAny tells whether folding msgs again without the void messages would change anything.
func (t tombstones) voidsAny(msgs []*segment.Message) bool {
	if t.empty() {
		return false
	}
	for _, m := range msgs {
		if m.Type == segment.TypeDelete {
			continue
		}
		if t.voidsUser(m.UserID, m) || t.voidsUser(m.PreviousID, m) || t.voidsAnonymousEvent(m) {
			return true
		}
	}
	return false
}

// raise records a deletion of kind ("user" or "anonymous") id at version, keeping the newest.
func (t *tombstones) raise(kind, id, version string) {
	m := &t.users
	if kind == "anonymous" {
		m = &t.anonymous
	}
	if *m == nil {
		*m = map[string]string{}
	}
	if version > (*m)[id] {
		(*m)[id] = version
	}
}
