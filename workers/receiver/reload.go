package receiver

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"time"

	"github.com/tallyhq/tally/workers/source"
)

// sourceFiles are the two files a receiver pod reads its source from: the operator's ConfigMap
// (settings) and the Secret key holding the write keys. The kubelet updates both mounts in place
// when the objects change, so polling them makes a key rotation take effect without a restart.
type sourceFiles struct {
	configFile        string
	writeKeysFile     string
	sharedSecretsFile string // optional: the secrets Segment signs deliveries with
	last              [sha256.Size]byte
}

// load reads and validates the source, remembering the files' fingerprint.
func (f *sourceFiles) load() (*source.Config, error) {
	f.last, _ = f.fingerprint()
	return f.read()
}

func (f *sourceFiles) read() (*source.Config, error) {
	c, err := source.LoadFiles(f.configFile, f.writeKeysFile)
	if err != nil {
		return nil, err
	}
	return c, source.LoadSharedSecrets(c, f.sharedSecretsFile)
}

// fingerprint hashes both files so a change is noticed without keeping the keys around.
func (f *sourceFiles) fingerprint() ([sha256.Size]byte, error) {
	h := sha256.New()
	for _, name := range []string{f.configFile, f.writeKeysFile, f.sharedSecretsFile} {
		if name == "" {
			continue
		}
		data, err := os.ReadFile(name)
		if err != nil {
			return [sha256.Size]byte{}, err
		}
		h.Write(data)
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum, nil
}

// watch re-reads the files every interval and hands a changed, valid source to apply. A file
// that cannot be read or holds an invalid source keeps the current configuration; the problem is
// logged once per distinct content.
func (f *sourceFiles) watch(ctx context.Context, interval time.Duration, log *slog.Logger, apply func(*source.Config) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	unreadable := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sum, err := f.fingerprint()
		if err != nil {
			if !unreadable {
				log.Error("cannot read the source files; keeping the current configuration", "error", err)
			}
			unreadable = true
			continue
		}
		unreadable = false
		if sum == f.last {
			continue
		}
		f.last = sum
		c, err := f.read()
		if err == nil {
			err = apply(c)
		}
		if err != nil {
			log.Error("invalid source configuration; keeping the current one", "error", err)
			continue
		}
		log.Info("source configuration reloaded", "source", c.String(), "writeKeys", len(c.WriteKeys), "sharedSecrets", len(c.SharedSecrets))
	}
}
