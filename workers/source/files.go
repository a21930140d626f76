package source

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
)

// ConfigFileName is the key of the operator's ConfigMap and the file it is mounted as.
const ConfigFileName = "source.json"

// LoadFiles reads a source's settings from the JSON file the operator's ConfigMap is mounted as and
// its write keys from the mounted Secret key file (the receiver's view). Both are re-read on every
// call, so a caller that polls them sees a rotation as soon as the kubelet has updated the mount.
func LoadFiles(configFile, writeKeysFile string) (*Config, error) {
	c, err := LoadConfigFile(configFile)
	if err != nil {
		return nil, err
	}
	keys, err := os.ReadFile(writeKeysFile)
	if err != nil {
		return nil, fmt.Errorf("write keys: %w", err)
	}
	c.WriteKeys = ParseWriteKeys(string(keys))
	return c, c.Validate()
}

// LoadSharedSecrets adds the shared secrets Segment signs its deliveries with, one per line,
// from the mounted Secret key file; an empty name means the source has none.
func LoadSharedSecrets(c *Config, sharedSecretsFile string) error {
	if sharedSecretsFile == "" {
		return nil
	}
	data, err := os.ReadFile(sharedSecretsFile)
	if err != nil {
		return fmt.Errorf("shared secrets: %w", err)
	}
	c.SharedSecrets = ParseWriteKeys(string(data))
	if len(c.SharedSecrets) == 0 {
		return fmt.Errorf("source %s: the shared secrets file %s holds no secret", c, sharedSecretsFile)
	}
	return nil
}

// LoadConfigFile reads a source's settings without write keys (the workers' view: they never need
// the keys).
func LoadConfigFile(configFile string) (*Config, error) {
	data, err := os.ReadFile(configFile)
	if err != nil {
		return nil, err
	}
	c, err := DecodeConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", configFile, err)
	}
	if c.Namespace == "" || c.Name == "" || c.Tenant == "" {
		return nil, fmt.Errorf("%s: namespace, name and tenant are required", configFile)
	}
	return c, nil
}

// EncodeConfig is the ConfigMap payload of a source; it never contains write keys.
func EncodeConfig(c *Config) ([]byte, error) { return json.MarshalIndent(c, "", "  ") }

// DecodeConfig reads what EncodeConfig wrote; unknown fields are an error so a typo is noticed.
func DecodeConfig(data []byte) (*Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	return &c, nil
}
