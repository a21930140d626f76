package local

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
)

var _ = Describe("Run with spec.insights", func() {
	It("pushes the insights of the sources that set them, here back into tally local itself", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_insights")
		addr, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		dir := writeManifests(map[string]string{"initech.yaml": `apiVersion: v1
kind: Secret
metadata:
  name: initech-segment
  labels: {tally.dev/source-secret: "true"}
stringData:
  writeKey: initech-key-0123456789
  # The Segment source receiving the insights: here, this very source.
  insightsWriteKey: initech-key-0123456789
  pausedWriteKey: initech-paused-key-0123
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: initech-web
spec:
  tenant: initech
  writeKeySecretRef: {name: initech-segment}
  insights:
    writeKeySecretRef: {name: initech-segment, key: insightsWriteKey}
    endpoint: http://` + addr + `
    interval: 5s
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: initech-paused
spec:
  tenant: initech-paused
  writeKeySecretRef: {name: initech-segment, key: pausedWriteKey}
  insights:
    writeKeySecretRef: {name: no-such-secret}
    suspend: true
`})
		r := start(Options{Manifests: dir, Listen: addr, DataDir: GinkgoT().TempDir(), DatabaseURL: dbURL})
		banner := string(r.banner.Contents())
		Expect(banner).To(ContainSubstring("insights:  to http://" + addr + " every 5s"))
		Expect(banner).To(ContainSubstring("source default/initech-paused"), "suspended insights need no Secret")
		Expect(banner).NotTo(ContainSubstring("every 1h0m0s"))

		code, body := r.post("/v1/batch", "initech-key-0123456789", batch("i1", "Initech", "bill@initech.test", "TPS Report Filed"))
		Expect(code).To(Equal(200), body)
		Eventually(func() []map[string]any {
			return query(ctx, dbURL, `SELECT traits->'tally_events_30d' AS events, traits->'tally_accounts' AS accounts
				FROM tally.users WHERE tenant = 'initech' AND user_id = 'u1'`)
		}).WithTimeout(60 * time.Second).WithPolling(200 * time.Millisecond).Should(ConsistOf(
			map[string]any{"events": 1.0, "accounts": 1.0}))
		Eventually(func() []map[string]any {
			return query(ctx, dbURL, `SELECT traits->'tally_users' AS users FROM tally.accounts WHERE tenant = 'initech'`)
		}).WithTimeout(60 * time.Second).WithPolling(200 * time.Millisecond).Should(ConsistOf(map[string]any{"users": 1.0}))
		Expect(query(ctx, dbURL, `SELECT count(*) AS n FROM tally.events WHERE tenant = 'initech'`)).To(ConsistOf(
			map[string]any{"n": int64(1)}), "the insights are no events")
		// The row describes the latest push: the one that delivered both entities, or a later one
		// (every 5 s) that delivered what changed since, so only its success is certain here.
		Expect(query(ctx, dbURL, `SELECT source, entities_pushed, last_error FROM tally.insights_pushes`)).To(ContainElement(And(
			HaveKeyWithValue("source", "default/initech-web"), HaveKeyWithValue("last_error", BeNil()),
			HaveKeyWithValue("entities_pushed", BeNumerically(">=", 1)))))
	})
})
