package source

import (
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("Config", func() {
	Describe("MatchesKey", func() {
		c := &Config{Namespace: "ns", Name: "n", Tenant: "t", WriteKeys: []string{"first-key-abc", "second-key-def", "third-key-ghi"}}

		It("accepts each of the source's keys", func() {
			for _, k := range c.WriteKeys {
				Expect(c.MatchesKey(k)).To(BeTrue(), k)
			}
		})

		It("refuses a wrong key, an empty key, a prefix or an extension of a key", func() {
			Expect(c.MatchesKey("wrong-key")).To(BeFalse())
			Expect(c.MatchesKey("")).To(BeFalse())
			Expect(c.MatchesKey("first-key")).To(BeFalse())
			Expect(c.MatchesKey("first-key-abcd")).To(BeFalse())
			Expect(c.MatchesKey(" first-key-abc")).To(BeFalse())
		})

		It("refuses everything when the source has no key", func() {
			empty := &Config{}
			Expect(empty.MatchesKey("")).To(BeFalse())
			Expect(empty.MatchesKey("x")).To(BeFalse())
		})
	})

	It("Ignores exactly the listed event names", func() {
		c := &Config{IgnoredEvents: []string{"Heartbeat", "Ping"}}
		Expect(c.Ignores("Heartbeat")).To(BeTrue())
		Expect(c.Ignores("Ping")).To(BeTrue())
		Expect(c.Ignores("heartbeat")).To(BeFalse())
		Expect(c.Ignores("Report Exported")).To(BeFalse())
		Expect(c.Ignores("")).To(BeFalse())
		Expect((&Config{}).Ignores("Heartbeat")).To(BeFalse())
	})

	It("ParseWriteKeys splits per line and drops blanks", func() {
		Expect(ParseWriteKeys("a\r\n\n  b  \n\t\n")).To(Equal([]string{"a", "b"}))
		Expect(ParseWriteKeys("")).To(BeEmpty())
	})

	It("Validate requires a name, a tenant and a key", func() {
		Expect((&Config{Namespace: "ns", Name: "n", Tenant: "t", WriteKeys: []string{"k"}}).Validate()).To(Succeed())
		Expect((&Config{Name: "n", Tenant: "t", WriteKeys: []string{"k"}}).Validate()).To(MatchError(ContainSubstring("namespace")))
		Expect((&Config{Namespace: "ns", Name: "n", WriteKeys: []string{"k"}}).Validate()).To(MatchError(ContainSubstring("tenant")))
		Expect((&Config{Namespace: "ns", Name: "n", Tenant: "t"}).Validate()).To(MatchError(ContainSubstring("no write key")))
	})

	It("String names the source without its keys", func() {
		c := &Config{Namespace: "ns", Name: "n", WriteKeys: []string{"secret-key"}}
		Expect(c.String()).To(Equal("ns/n"))
	})
})

var _ = Describe("config files", func() {
	full := func() *Config {
		return &Config{
			Namespace: "shop", Name: "web", Tenant: "shop-tenant", AccountProperty: "accountId",
			IgnoredEvents: []string{"Heartbeat"}, StreamMaxAge: 3 * time.Hour, StreamReplicas: 3,
			WriteKeys: []string{"very-secret-write-key-1", "very-secret-write-key-2"},
		}
	}

	It("EncodeConfig and DecodeConfig round-trip every setting but the keys", func() {
		c := full()
		data, err := EncodeConfig(c)
		Expect(err).NotTo(HaveOccurred())
		back, err := DecodeConfig(data)
		Expect(err).NotTo(HaveOccurred())
		want := *c
		want.WriteKeys = nil
		Expect(*back).To(Equal(want))
	})

	It("EncodeConfig never writes a write key", func() {
		data, err := EncodeConfig(full())
		Expect(err).NotTo(HaveOccurred())
		Expect(string(data)).NotTo(ContainSubstring("very-secret-write-key"))
		Expect(string(data)).NotTo(ContainSubstring("riteKey"))
	})

	It("DecodeConfig refuses an unknown field", func() {
		_, err := DecodeConfig([]byte(`{"namespace":"ns","name":"n","tenant":"t","tennant":"typo"}`))
		Expect(err).To(MatchError(ContainSubstring("tennant")))
		// Write keys are never read from the ConfigMap either.
		_, err = DecodeConfig([]byte(`{"namespace":"ns","name":"n","tenant":"t","WriteKeys":["k"]}`))
		Expect(err).To(HaveOccurred())
	})

	It("DecodeConfig refuses malformed JSON", func() {
		_, err := DecodeConfig([]byte(`{"namespace":`))
		Expect(err).To(HaveOccurred())
	})

	Describe("LoadConfigFile and LoadFiles", func() {
		var dir, configFile, keysFile string
		BeforeEach(func() {
			dir = GinkgoT().TempDir()
			configFile = filepath.Join(dir, ConfigFileName)
			keysFile = filepath.Join(dir, "writeKey")
			data, err := EncodeConfig(full())
			Expect(err).NotTo(HaveOccurred())
			Expect(os.WriteFile(configFile, data, 0o644)).To(Succeed())
			Expect(os.WriteFile(keysFile, []byte("key-a\n\n key-b \n"), 0o600)).To(Succeed())
		})

		It("LoadConfigFile reads the settings without keys", func() {
			c, err := LoadConfigFile(configFile)
			Expect(err).NotTo(HaveOccurred())
			Expect(c.String()).To(Equal("shop/web"))
			Expect(c.Tenant).To(Equal("shop-tenant"))
			Expect(c.StreamMaxAge).To(Equal(3 * time.Hour))
			Expect(c.WriteKeys).To(BeEmpty())
		})

		It("LoadFiles adds the keys from the key file, one per line", func() {
			c, err := LoadFiles(configFile, keysFile)
			Expect(err).NotTo(HaveOccurred())
			Expect(c.WriteKeys).To(Equal([]string{"key-a", "key-b"}))
			Expect(c.MatchesKey("key-b")).To(BeTrue())
		})

		It("LoadFiles sees a rotated key file on the next call", func() {
			Expect(os.WriteFile(keysFile, []byte("key-c\n"), 0o600)).To(Succeed())
			c, err := LoadFiles(configFile, keysFile)
			Expect(err).NotTo(HaveOccurred())
			Expect(c.WriteKeys).To(Equal([]string{"key-c"}))
		})

		It("LoadFiles refuses an empty or missing key file", func() {
			Expect(os.WriteFile(keysFile, []byte("\n \n"), 0o600)).To(Succeed())
			_, err := LoadFiles(configFile, keysFile)
			Expect(err).To(MatchError(ContainSubstring("no write key")))
			_, err = LoadFiles(configFile, filepath.Join(dir, "missing"))
			Expect(err).To(MatchError(ContainSubstring("write keys")))
		})

		It("LoadConfigFile refuses a missing file, a typo, and missing required settings, naming the file", func() {
			_, err := LoadConfigFile(filepath.Join(dir, "missing.json"))
			Expect(err).To(HaveOccurred())

			Expect(os.WriteFile(configFile, []byte(`{"namespace":"ns","name":"n","tenant":"t","ignoredEvent":["x"]}`), 0o644)).To(Succeed())
			_, err = LoadConfigFile(configFile)
			Expect(err).To(MatchError(And(ContainSubstring(configFile), ContainSubstring("ignoredEvent"))))

			Expect(os.WriteFile(configFile, []byte(`{"namespace":"ns","name":"n"}`), 0o644)).To(Succeed())
			_, err = LoadConfigFile(configFile)
			Expect(err).To(MatchError(And(ContainSubstring(configFile), ContainSubstring("tenant"))))
		})
	})
})
