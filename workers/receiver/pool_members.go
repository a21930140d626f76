package receiver

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
)

// poolMembers turns a pool's members (from its bucket) and their shared secrets (files the
// operator mounts, one per member) into the receiver's served set.
type poolMembers struct {
	rcv        *Receiver
	secretsDir string
	log        *slog.Logger
	// loaded turns true once the bucket's content has arrived.
	loaded atomic.Bool

	mu       sync.Mutex
	members  map[string]pool.Member
	secrets  map[string][]string // by member key; none when its file is missing
	problems map[string]string   // by member key: the last problem logged, so each is logged once
	pass     map[string]bool     // members with a problem in the current refresh
	served   map[string]bool     // the sources ("namespace/name") served since the last refresh
}

func newPoolMembers(rcv *Receiver, secretsDir string, log *slog.Logger) *poolMembers {
	return &poolMembers{rcv: rcv, secretsDir: secretsDir, log: log, secrets: map[string][]string{}, problems: map[string]string{}}
}

// setMembers serves the pool's members as the bucket now lists them.
func (p *poolMembers) setMembers(members map[string]pool.Member) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.members = members
	p.refresh(true)
	if !p.loaded.Swap(true) {
		p.log.Info("pool members loaded", "members", len(members))
	}
}

// badEntry reports a bucket entry that does not decode (it serves nothing).
func (p *poolMembers) badEntry(key string, err error) {
	p.log.Error("a pool member's entry does not decode; not serving it", "member", key, "error", err)
}

// watchSecrets re-reads the shared secrets every interval: the kubelet updates the mounted
// Secret in place when one rotates.
func (p *poolMembers) watchSecrets(ctx context.Context, interval time.Duration) {
	if p.secretsDir == "" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		if p.members != nil {
			p.refresh(false)
		}
		p.mu.Unlock()
	}
}

// refresh reads the shared secrets again and serves the members when they or the secrets changed.
func (p *poolMembers) refresh(membersChanged bool) {
	p.pass = map[string]bool{}
	if p.readSecrets() || membersChanged {
		p.apply()
	}
}

// readSecrets reads every member's shared secrets file and reports whether any changed. A missing
// file is normal: the member has no destination secret.
func (p *poolMembers) readSecrets() bool {
	if p.secretsDir == "" {
		return false
	}
	changed := false
	for key := range p.members {
		data, err := os.ReadFile(filepath.Join(p.secretsDir, key))
		var secrets []string
		switch {
		case err == nil:
			secrets = source.ParseWriteKeys(string(data))
		case !errors.Is(err, fs.ErrNotExist):
			p.problem(key, "cannot read the member's shared secrets; keeping the last read", err)
			continue
		}
		if !slices.Equal(secrets, p.secrets[key]) {
			p.secrets[key] = secrets
			changed = true
		}
	}
	for key := range p.secrets {
		if _, ok := p.members[key]; !ok {
			delete(p.secrets, key)
		}
	}
	return changed
}

// apply replaces the served set with the current members. A member that is not valid is left
// out (and logged), never the others; a key digest two members claim serves neither of them, as
// it cannot say which tenant a request belongs to.
func (p *poolMembers) apply() {
	claims := map[[32]byte][]string{}
	configs := map[string]*source.Config{}
	for key, m := range p.members {
		c, err := m.Config()
		if err != nil {
			p.problem(key, "invalid pool member; not serving it", err)
			continue
		}
		c.SharedSecrets = p.secrets[key]
		configs[key] = c
		for _, d := range c.WriteKeyDigests {
			claims[d] = append(claims[d], key)
		}
	}
	var active, suspended []*source.Config
	for _, key := range slices.Sorted(maps.Keys(configs)) {
		c := configs[key]
		c.WriteKeyDigests = slices.DeleteFunc(c.WriteKeyDigests, func(d [32]byte) bool {
			if len(claims[d]) > 1 {
				p.problem(key, "a write key of this member belongs to another member too; refusing it for both", nil)
				return true
			}
			return false
		})
		if len(c.WriteKeyDigests) == 0 {
			continue
		}
		if p.members[key].Suspended {
			suspended = append(suspended, c)
		} else {
			active = append(active, c)
		}
	}
	served := make(map[string]bool, len(configs))
	for _, c := range configs {
		served[c.String()] = true
		if !p.served[c.String()] {
			p.rcv.metrics.Serve(c.String()) // joined, or came back: counted from its first request
		}
	}
	if err := p.rcv.SetMembers(active, suspended); err != nil {
		// Not expected: every member was validated above.
		p.log.Error("pool members refused; serving the previous set", "error", err)
	}
	for name := range p.served {
		if !served[name] {
			p.rcv.metrics.Forget(name) // left: its series go too
		}
	}
	p.served = served
	for key := range p.problems {
		if !p.pass[key] {
			delete(p.problems, key) // solved: log it again should it come back
		}
	}
}

// problem logs a member's problem once, until it changes or goes away.
func (p *poolMembers) problem(key, msg string, err error) {
	p.pass[key] = true
	text := msg
	if err != nil {
		text += ": " + err.Error()
	}
	if p.problems[key] == text {
		return
	}
	p.problems[key] = text
	if err == nil {
		p.log.Error(msg, "member", key)
		return
	}
	p.log.Error(msg, "member", key, "error", err)
}
