package natsserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nkeys"
)

// AccountName is the name of the account Tally's streams live in on the embedded server.
const AccountName = "TALLY"

// Auth are the keys of an embedded server in decentralized JWT mode, as nkey seeds: the operator,
// its system account, the account Tally uses, and a signing key of that account, which is what the
// operator (or tally local) issues per-source users with.
type Auth struct {
	OperatorSeed      string `json:"operator"`
	SystemAccountSeed string `json:"systemAccount"`
	AccountSeed       string `json:"account"`
	SigningKeySeed    string `json:"signingKey"`
}

// NewAuth makes fresh keys.
func NewAuth() (*Auth, error) {
	a := &Auth{}
	for _, k := range []struct {
		seed   *string
		create func() (nkeys.KeyPair, error)
	}{
		{&a.OperatorSeed, nkeys.CreateOperator},
		{&a.SystemAccountSeed, nkeys.CreateAccount},
		{&a.AccountSeed, nkeys.CreateAccount},
		{&a.SigningKeySeed, nkeys.CreateAccount},
	} {
		kp, err := k.create()
		if err != nil {
			return nil, err
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, err
		}
		*k.seed = string(seed)
	}
	return a, nil
}

// LoadOrCreateAuth reads the keys kept in file, or makes them and writes them there (mode 0600):
// the streams of an account live under its key in the store, so a data directory keeps its keys.
func LoadOrCreateAuth(file string) (*Auth, error) {
	raw, err := os.ReadFile(file)
	if err == nil {
		a := &Auth{}
		if err := json.Unmarshal(raw, a); err != nil {
			return nil, fmt.Errorf("nats keys %s: %w", file, err)
		}
		if _, err := a.keys(); err != nil {
			return nil, fmt.Errorf("nats keys %s: %w", file, err)
		}
		return a, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	a, err := NewAuth()
	if err != nil {
		return nil, err
	}
	raw, err = json.MarshalIndent(a, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		return nil, err
	}
	return a, nil
}

// AccountPublicKey is the account Tally's streams live in.
func (a *Auth) AccountPublicKey() string {
	k, err := a.keys()
	if err != nil {
		return ""
	}
	return k.accountPub
}

type authKeys struct {
	operator                                       nkeys.KeyPair
	operatorPub, systemPub, accountPub, signingPub string
}

func (a *Auth) keys() (authKeys, error) {
	var k authKeys
	var err error
	if k.operator, err = nkeys.FromSeed([]byte(a.OperatorSeed)); err != nil {
		return k, fmt.Errorf("operator key: %w", err)
	}
	for _, p := range []struct {
		seed string
		pub  *string
		what string
	}{
		{a.OperatorSeed, &k.operatorPub, "operator"},
		{a.SystemAccountSeed, &k.systemPub, "system account"},
		{a.AccountSeed, &k.accountPub, "account"},
		{a.SigningKeySeed, &k.signingPub, "signing"},
	} {
		kp, err := nkeys.FromSeed([]byte(p.seed))
		if err != nil {
			return k, fmt.Errorf("%s key: %w", p.what, err)
		}
		if *p.pub, err = kp.PublicKey(); err != nil {
			return k, fmt.Errorf("%s key: %w", p.what, err)
		}
	}
	if !nkeys.IsValidPublicOperatorKey(k.operatorPub) {
		return k, errors.New("operator key: not an operator key")
	}
	for _, pub := range []string{k.systemPub, k.accountPub, k.signingPub} {
		if !nkeys.IsValidPublicAccountKey(pub) {
			return k, errors.New("account key: not an account key")
		}
	}
	return k, nil
}
