package receiver

import (
	"golang.org/x/sync/semaphore"
)

// Defaults of the admission bounds, sized for the operator's default receiver pod (256 MiB
// memory limit): 64 MiB of bodies and normalised messages held at once. The collector's headroom
// (gcpolicy's GOGC=200) could triple that; its soft memory limit, 90% of the pod's, has it collect
// sooner instead, leaving room for the runtime and the NATS client.
const (
	DefaultMaxRequestsInFlight = 256
	DefaultMaxBytesInFlight    = 64 << 20
	DefaultMaxConnections      = 4096
)

// shedRetryAfterSeconds is what a request shed for load asks its client to wait.
const shedRetryAfterSeconds = "2"

// admission bounds what the receiver holds at once: requests in flight, and the bytes they keep
// (each body, reserved at its endpoint's limit before it is read and shrunk to its size after,
// then the messages it normalises into, reserved at the request's OutputBound). Past either bound
// a request is shed with 429 and Retry-After instead of growing memory: nothing of it was
// published, and every Segment client retries a 429.
type admission struct {
	requests *semaphore.Weighted
	bytes    *semaphore.Weighted
}

func newAdmission(maxRequests int, maxBytes int64) *admission {
	return &admission{requests: semaphore.NewWeighted(int64(maxRequests)), bytes: semaphore.NewWeighted(maxBytes)}
}

// enter admits a request, or reports that too many are in flight; leave undoes it.
func (a *admission) enter() bool { return a.requests.TryAcquire(1) }
func (a *admission) leave()      { a.requests.Release(1) }

// reservation is the bytes one request holds; release gives back the rest at its end.
type reservation struct {
	a    *admission
	held int64
}

// reserve adds n bytes to the reservation, or reports that the receiver holds too much.
func (r *reservation) reserve(n int) bool {
	if n <= 0 {
		return true
	}
	if !r.a.bytes.TryAcquire(int64(n)) {
		return false
	}
	r.held += int64(n)
	return true
}

// shrink gives back n of the held bytes early (a body smaller than its endpoint's limit).
func (r *reservation) shrink(n int) {
	n64 := min(int64(n), r.held)
	if n64 > 0 {
		r.a.bytes.Release(n64)
		r.held -= n64
	}
}

func (r *reservation) release() { r.shrink(int(r.held)) }
