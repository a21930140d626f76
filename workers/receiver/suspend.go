package receiver

import "github.com/tallyhq/tally/workers/source"

// codeSourceSuspended refuses a request of a suspended source.
const codeSourceSuspended = "source_suspended"

// suspendedRetryAfterSeconds is longer than a 503's usual wait: a suspension is a decision, not
// a blip, and Segment keeps retrying a 503 for hours (it drops a 401 at once).
const suspendedRetryAfterSeconds = "60"

// SetMembers is SetSources for a pool's receivers: the suspended sources keep their write keys
// known, so their requests are answered 503 source_suspended with Retry-After (clients and
// Segment retry, nothing is lost) rather than 401 (Segment would drop the events). Requests in
// flight finish with the set they started with.
func (r *Receiver) SetMembers(active, suspended []*source.Config) error {
	set, err := newSourceSet(append(append([]*source.Config(nil), active...), suspended...))
	if err != nil {
		return err
	}
	if len(suspended) > 0 {
		set.suspended = make(map[*source.Config]bool, len(suspended))
		for _, c := range suspended {
			set.suspended[c] = true
		}
	}
	r.rateLimits.attach(set)
	r.sources.Store(set)
	return nil
}

// suspended reports whether the request carries a suspended source's key. A batch mixing keys
// is refused whole when one is suspended: a 503 loses nothing, accepting part of it would drop
// the suspended source's messages.
func (a authentication) suspended() bool {
	if a.sources.suspended == nil {
		return false
	}
	if a.source != nil {
		return a.sources.suspended[a.source]
	}
	for _, s := range a.perItem {
		if s != nil && a.sources.suspended[s] {
			return true
		}
	}
	return false
}
