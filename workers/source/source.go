// Package source holds the runtime settings of a SegmentSource as the receiver and the workers see
// them, their defaults, and how they travel: the operator encodes them into the ConfigMap it
// mounts into pods (write keys come from the mounted Secret), and the pods load those files.
// tally local builds the same settings from manifests (see package local).
package source

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/tallyhq/tally/workers/stream"
)

// Config is one SegmentSource's runtime settings.
type Config struct {
	Namespace       string        `json:"namespace"`
	Name            string        `json:"name"`
	Tenant          string        `json:"tenant"`
	AccountProperty string        `json:"accountProperty,omitempty"`
	IgnoredEvents   []string      `json:"ignoredEvents,omitempty"`
	StreamMaxAge    time.Duration `json:"streamMaxAge,omitempty"`
	StreamReplicas  int           `json:"streamReplicas,omitempty"`
	StreamMaxBytes  int64         `json:"streamMaxBytes,omitempty"`
	// Partitions splits the source's messages by user into this many subject partitions, each
	// with its own consumer and lock, so several workers apply one tenant's messages at once; 0 or
	// 1 is one partition, the layout of earlier versions.
	Partitions int `json:"partitions,omitempty"`
	// ConsumerPartitions is how many partition consumers the stream has, when more than
	// Partitions: the source had more partitions before, and their consumers still hold what was
	// published to them. The workers consume them all (ConsumedPartitions).
	ConsumerPartitions int `json:"consumerPartitions,omitempty"`
	// WriteKeys are secrets: they never appear in the ConfigMap (json:"-") and are never logged.
	WriteKeys []string `json:"-"`
	// WriteKeyDigests are SHA-256 digests of further write keys: what a pool's receivers know of
	// their members' keys (package pool), so the keys themselves are never copied to them.
	WriteKeyDigests [][sha256.Size]byte `json:"-"`
	// SharedSecrets sign what Segment delivers to the destination route (X-Signature); secrets
	// like the write keys, several during a rotation.
	SharedSecrets []string `json:"-"`
	// Insights, when set, has the workers push the tenant's account and user insights to a
	// Segment source (package insights); nil when the source pushes none or they are suspended.
	Insights *InsightsConfig `json:"insights,omitempty"`
	// RateLimit bounds the events each receiver accepts for the source; nil: no limit.
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
}

// RateLimit is a token bucket of events per receiver: EventsPerSecond refill it, Burst bounds
// it (EventsPerSecond when 0).
type RateLimit struct {
	EventsPerSecond int `json:"eventsPerSecond"`
	Burst           int `json:"burst,omitempty"`
}

// BurstOrDefault is the bucket's size.
func (l RateLimit) BurstOrDefault() int {
	if l.Burst > 0 {
		return l.Burst
	}
	return l.EventsPerSecond
}

// InsightsConfig says where and how often a source's insights go.
type InsightsConfig struct {
	// Endpoint is the Segment-compatible Tracking API the insights are sent to (/v1/batch).
	Endpoint string `json:"endpoint"`
	// Interval is the time between two pushes.
	Interval time.Duration `json:"interval"`
	// WriteKey is the write key of the Segment source receiving the insights: a secret, never in
	// the ConfigMap (json:"-"); the workers read it from the mounted Secret key.
	WriteKey string `json:"-"`
}

// Stream identifies the source's JetStream objects.
func (c *Config) Stream() stream.Source {
	return stream.Source{Namespace: c.Namespace, Name: c.Name}
}

// StreamSettings shapes the source's streams.
func (c *Config) StreamSettings() stream.Settings {
	return stream.Settings{MaxAge: c.StreamMaxAge, Replicas: c.StreamReplicas, MaxBytes: c.StreamMaxBytes, Tenant: c.Tenant,
		Partitions: c.Partitions}
}

// ConsumedPartitions is how many partition consumers the workers consume.
func (c *Config) ConsumedPartitions() int { return max(c.Partitions, c.ConsumerPartitions) }

// String names the source without revealing its keys.
func (c *Config) String() string { return c.Namespace + "/" + c.Name }

// Ignores reports whether track events with this name are dropped at the receiver.
func (c *Config) Ignores(event string) bool {
	for _, e := range c.IgnoredEvents {
		if e == event {
			return true
		}
	}
	return false
}

// KeyDigests are the SHA-256 digests of every write key of the source, given or digested.
func (c *Config) KeyDigests() [][sha256.Size]byte {
	out := make([][sha256.Size]byte, 0, len(c.WriteKeys)+len(c.WriteKeyDigests))
	for _, k := range c.WriteKeys {
		out = append(out, sha256.Sum256([]byte(k)))
	}
	return append(out, c.WriteKeyDigests...)
}

// MatchesKey compares key against every write key of the source in constant time. It compares
// SHA-256 digests, which all have one length, so neither the position of a match, nor a common
// prefix, nor a key's length shows in the timing.
func (c *Config) MatchesKey(key string) bool {
	given := sha256.Sum256([]byte(key))
	match := 0
	for _, k := range c.WriteKeys {
		want := sha256.Sum256([]byte(k))
		match |= subtle.ConstantTimeCompare(want[:], given[:])
	}
	for _, want := range c.WriteKeyDigests {
		match |= subtle.ConstantTimeCompare(want[:], given[:])
	}
	return match == 1
}

// MatchesSignature checks an X-Signature header (lowercase hex HMAC-SHA1 of the signed bytes,
// keyed with a shared secret) against every shared secret of the source, in constant time.
func (c *Config) MatchesSignature(signed []byte, signature string) bool {
	given, err := hex.DecodeString(strings.TrimSpace(signature))
	if err != nil || len(given) != sha1.Size {
		return false
	}
	match := 0
	for _, secret := range c.SharedSecrets {
		mac := hmac.New(sha1.New, []byte(secret))
		mac.Write(signed)
		match |= subtle.ConstantTimeCompare(mac.Sum(nil), given)
	}
	return match == 1
}

// ParseWriteKeys splits a Secret value into write keys: one per line, blanks and surrounding
// whitespace ignored, so "old\nnew\n" accepts both during a rotation.
func ParseWriteKeys(value string) []string {
	var keys []string
	for _, line := range strings.Split(value, "\n") {
		if k := strings.TrimSpace(line); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// Validate checks what the receiver and the workers rely on.
func (c *Config) Validate() error {
	switch {
	case c.Namespace == "" || c.Name == "":
		return fmt.Errorf("source needs a namespace and a name")
	case c.Tenant == "":
		return fmt.Errorf("source %s: tenant is required", c)
	case len(c.WriteKeys) == 0 && len(c.WriteKeyDigests) == 0:
		return fmt.Errorf("source %s: no write key", c)
	case c.RateLimit != nil && (c.RateLimit.EventsPerSecond <= 0 || c.RateLimit.Burst < 0):
		return fmt.Errorf("source %s: a rate limit needs a positive eventsPerSecond and burst", c)
	}
	return nil
}
