package local

import (
	"encoding/base64"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

const webSecret = `apiVersion: v1
kind: Secret
metadata:
  name: web-keys
  namespace: shop
type: Opaque
stringData:
  writeKey: |
    old-key-0123456789

      new-key-9876543210  
`

const webSource = `apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: web
  namespace: shop
spec:
  tenant: shop-tenant
  writeKeySecretRef:
    name: web-keys
  accountProperty: accountId
  ignoredEvents: ["Heartbeat", "Ping"]
  stream:
    maxAge: 2h
`

var _ = Describe("LoadManifests", func() {
	It("reads multi-document YAML, resolves stringData keys one per line and keeps the settings", func() {
		dir := writeManifests(map[string]string{"web.yaml": webSecret + "---\n" + webSource})
		sources, err := LoadManifests(dir)
		Expect(err).NotTo(HaveOccurred())
		Expect(sources).To(HaveLen(1))
		s := sources[0]
		Expect(s.String()).To(Equal("shop/web"))
		Expect(s.Tenant).To(Equal("shop-tenant"))
		Expect(s.AccountProperty).To(Equal("accountId"))
		Expect(s.IgnoredEvents).To(Equal([]string{"Heartbeat", "Ping"}))
		Expect(s.StreamMaxAge.Hours()).To(Equal(2.0))
		// Blank lines dropped, surrounding whitespace trimmed, both keys of a rotation accepted.
		Expect(s.WriteKeys).To(Equal([]string{"old-key-0123456789", "new-key-9876543210"}))
	})

	It("reads a destination's shared secrets, and refuses a source whose shared secret Secret is missing", func() {
		withDestination := webSource + "  destination:\n    sharedSecretRef:\n      name: web-signing\n"
		signing := "apiVersion: v1\nkind: Secret\nmetadata:\n  name: web-signing\n  namespace: shop\nstringData:\n  sharedSecret: |\n    old-secret\n    new-secret\n"
		sources, err := LoadManifests(writeManifests(map[string]string{"web.yaml": webSecret + "---\n" + withDestination + "---\n" + signing}))
		Expect(err).NotTo(HaveOccurred())
		Expect(sources[0].SharedSecrets).To(Equal([]string{"old-secret", "new-secret"}))

		_, err = LoadManifests(writeManifests(map[string]string{"web.yaml": webSecret + "---\n" + withDestination}))
		Expect(err).To(MatchError(ContainSubstring(`shared secret Secret "web-signing" not found`)))
	})

	It("reads JSON files, base64 data, defaults the namespace and finds manifests in subdirectories", func() {
		encoded := base64.StdEncoding.EncodeToString([]byte("json-key-1\njson-key-2\n"))
		dir := writeManifests(map[string]string{
			"nested/secret.json": `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"app-keys"},"data":{"key":"` + encoded + `"}}`,
			"source.yml": `apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: app
spec:
  tenant: t1
  writeKeySecretRef: {name: app-keys, key: key}
`,
			"notes.txt": "not a manifest: ignored",
		})
		sources, err := LoadManifests(dir)
		Expect(err).NotTo(HaveOccurred())
		Expect(sources).To(HaveLen(1))
		Expect(sources[0].Namespace).To(Equal("default"))
		Expect(sources[0].Name).To(Equal("app"))
		Expect(sources[0].WriteKeys).To(Equal([]string{"json-key-1", "json-key-2"}))
	})

	It("skips kustomization.yaml", func() {
		dir := writeManifests(map[string]string{
			"web.yaml": webSecret + "---\n" + webSource,
			// Would fail to parse as a SegmentSource list if it were read.
			"kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [web.yaml]\n",
		})
		sources, err := LoadManifests(dir)
		Expect(err).NotTo(HaveOccurred())
		Expect(sources).To(HaveLen(1))
	})

	It("loads several sources across files", func() {
		dir := writeManifests(map[string]string{
			"a.yaml": webSecret + "---\n" + webSource,
			"b.yaml": `apiVersion: v1
kind: Secret
metadata: {name: other-keys, namespace: other}
stringData: {writeKey: other-key}
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata: {name: web, namespace: other}
spec:
  tenant: other-tenant
  writeKeySecretRef: {name: other-keys}
`,
		})
		sources, err := LoadManifests(dir)
		Expect(err).NotTo(HaveOccurred())
		names := []string{}
		for _, s := range sources {
			names = append(names, s.String()+"="+s.Tenant)
		}
		Expect(names).To(ConsistOf("shop/web=shop-tenant", "other/web=other-tenant"))
	})

	It("skips suspended sources, even when their Secret is missing", func() {
		dir := writeManifests(map[string]string{
			"web.yaml": webSecret + "---\n" + webSource,
			"paused.yaml": `apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata: {name: paused, namespace: shop}
spec:
  tenant: shop-tenant
  suspend: true
  writeKeySecretRef: {name: nowhere}
`,
		})
		sources, err := LoadManifests(dir)
		Expect(err).NotTo(HaveOccurred())
		Expect(sources).To(HaveLen(1))
		Expect(sources[0].Name).To(Equal("web"))
	})

	It("names a missing Secret", func() {
		dir := writeManifests(map[string]string{"web.yaml": webSource})
		_, err := LoadManifests(dir)
		Expect(err).To(MatchError(And(ContainSubstring("shop/web"), ContainSubstring(`"web-keys"`))))
	})

	It("does not take a Secret of another namespace", func() {
		dir := writeManifests(map[string]string{"web.yaml": `apiVersion: v1
kind: Secret
metadata: {name: web-keys, namespace: elsewhere}
stringData: {writeKey: k}
---
` + webSource})
		_, err := LoadManifests(dir)
		Expect(err).To(MatchError(ContainSubstring(`"web-keys"`)))
	})

	It("refuses a Secret without the key", func() {
		dir := writeManifests(map[string]string{"web.yaml": `apiVersion: v1
kind: Secret
metadata: {name: web-keys, namespace: shop}
stringData: {otherKey: k}
---
` + webSource})
		_, err := LoadManifests(dir)
		Expect(err).To(MatchError(And(ContainSubstring("shop/web"), ContainSubstring(`"writeKey"`))))
	})

	It("refuses a key holding only blank lines", func() {
		dir := writeManifests(map[string]string{"web.yaml": `apiVersion: v1
kind: Secret
metadata: {name: web-keys, namespace: shop}
stringData: {writeKey: "  \n\n"}
---
` + webSource})
		_, err := LoadManifests(dir)
		Expect(err).To(MatchError(ContainSubstring("no write key")))
	})

	It("refuses a source defined twice", func() {
		dir := writeManifests(map[string]string{
			"a.yaml": webSecret + "---\n" + webSource,
			"b.yaml": webSource,
		})
		_, err := LoadManifests(dir)
		Expect(err).To(MatchError(And(ContainSubstring("shop/web"), ContainSubstring("twice"))))
	})

	It("refuses a directory without a SegmentSource", func() {
		dir := writeManifests(map[string]string{"secret.yaml": webSecret})
		_, err := LoadManifests(dir)
		Expect(err).To(MatchError(ContainSubstring("no SegmentSource found")))
	})

	It("refuses a missing directory", func() {
		_, err := LoadManifests(GinkgoT().TempDir() + "/missing")
		Expect(err).To(HaveOccurred())
	})

	It("refuses an unknown field in a SegmentSource, naming the file", func() {
		dir := writeManifests(map[string]string{"web.yaml": webSecret + "---\n" + webSource + "  tennant: typo\n"})
		_, err := LoadManifests(dir)
		Expect(err).To(MatchError(And(ContainSubstring("web.yaml"), ContainSubstring("tennant"))))
	})
})
