package e2e

import (
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Two tenants of two namespaces join a pool of the platform namespace: the pool's receiver and
// worker, run from the operator's pod templates with the Secrets it filled and the NATS users it
// issued, take each member's events by its key into its own tenant's rows.
var _ = Describe("a SegmentSourcePool from kubectl apply to rows in Postgres", Ordered, func() {
	const (
		globexKey  = "e2e-pool-globex-key-0123456789abcd"
		initechKey = "e2e-pool-initech-key-0123456789abc"
	)
	var started []*pod
	AfterAll(func() {
		for _, p := range started {
			p.proc.stop()
		}
	})

	It("reconciles the pool and its members without Deployments of the members' own", func() {
		kubectlApply(`
apiVersion: v1
kind: Namespace
metadata: {name: platform}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-globex, labels: {tally.dev/tier: shared}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-initech, labels: {tally.dev/tier: shared}}
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSourcePool
metadata: {name: shared, namespace: platform}
spec:
  allowedNamespaces:
    from: Selector
    selector: {matchLabels: {tally.dev/tier: shared}}
---
apiVersion: tally.dev/v1alpha1
kind: Tenant
metadata: {name: globex}
spec: {namespaces: [team-globex]}
---
apiVersion: tally.dev/v1alpha1
kind: Tenant
metadata: {name: initech}
spec: {namespaces: [team-initech]}
---
apiVersion: v1
kind: Secret
metadata: {name: web-segment, namespace: team-globex, labels: {tally.dev/source-secret: "true"}}
stringData: {writeKey: ` + globexKey + `}
---
apiVersion: v1
kind: Secret
metadata: {name: app-segment, namespace: team-initech, labels: {tally.dev/source-secret: "true"}}
stringData: {writeKey: ` + initechKey + `}
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata: {name: web, namespace: team-globex}
spec:
  tenant: globex
  writeKeySecretRef: {name: web-segment}
  ignoredEvents: ["Heartbeat"]
  pool: {name: shared, namespace: platform}
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata: {name: app, namespace: team-initech}
spec:
  tenant: initech
  writeKeySecretRef: {name: app-segment}
  pool: {name: shared, namespace: platform}
`)
		for _, name := range []string{"shared-receiver", "shared-worker"} {
			Eventually(func() error {
				return k8s.Get(ctx, types.NamespacedName{Namespace: "platform", Name: name}, &appsv1.Deployment{})
			}).WithTimeout(60*time.Second).Should(Succeed(), name)
		}
		// The pool's own login and the members' tenant roles are in the workers' Secret before the
		// workers start.
		Eventually(func() []string {
			var s corev1.Secret
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: "platform", Name: "shared-worker-secrets"}, &s); err != nil {
				return nil
			}
			var keys []string
			for k := range s.Data {
				keys = append(keys, k)
			}
			return keys
		}).WithTimeout(60 * time.Second).Should(ConsistOf("pool.database-url", "team-globex.web.database-role", "team-initech.app.database-role"))
		var deps appsv1.DeploymentList
		Expect(k8s.List(ctx, &deps)).To(Succeed())
		for _, d := range deps.Items {
			Expect(d.Namespace).NotTo(HavePrefix("team-"), "members have no Deployments")
		}
	})

	It("runs the pool's pods as specified and turns the members Ready", func() {
		receiver := runPod("platform", "shared-receiver")
		worker := runPod("platform", "shared-worker")
		started = append(started, receiver, worker)
		receiver.waitReady("platform")
		worker.waitReady("platform")
		out, err := kubectl("wait", "--for=condition=Ready", "segmentsourcepool/shared", "-n", "platform", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
		for _, m := range []string{"team-globex/web", "team-initech/app"} {
			ns, name, _ := strings.Cut(m, "/")
			out, err := kubectl("wait", "--for=condition=Ready", "segmentsource/"+name, "-n", ns, "--timeout=60s")
			Expect(err).NotTo(HaveOccurred(), out)
		}

		By("each member's key writing its own tenant's rows through the shared pods")
		for _, c := range []struct{ key, tenant string }{{globexKey, "globex"}, {initechKey, "initech"}} {
			Eventually(func() (int, error) { return post(receiver.url(8080), c.key) }).
				WithTimeout(30*time.Second).Should(Equal(http.StatusOK), c.tenant)
			Eventually(func() (int, error) {
				var n int
				err := db.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1 AND event = 'Signed In'`, c.tenant).Scan(&n)
				return n, err
			}).WithTimeout(30*time.Second).Should(BeNumerically(">=", 1), c.tenant)
		}
		code, err := post(receiver.url(8080), "not-a-member-key-0123456789")
		Expect(err).NotTo(HaveOccurred())
		Expect(code).To(Equal(http.StatusUnauthorized))
	})

	It("holds each member to the pool's rate limit, which reaches the running receiver without a rollout", func() {
		receiver := started[0]
		out, err := kubectl("patch", "segmentsourcepool/shared", "-n", "platform", "--type=merge",
			"-p", `{"spec":{"receiver":{"rateLimit":{"eventsPerSecond":1,"burst":1}}}}`)
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(func() (int, error) { return post(receiver.url(8080), globexKey) }).
			WithTimeout(30*time.Second).Should(Equal(http.StatusTooManyRequests), "one event a second, sent faster")
		Expect(post(receiver.url(8080), initechKey)).To(Equal(http.StatusOK), "the other member has a bucket of its own")

		out, err = kubectl("patch", "segmentsourcepool/shared", "-n", "platform", "--type=merge",
			"-p", `{"spec":{"receiver":{"rateLimit":null}}}`)
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(func() (int, error) { return post(receiver.url(8080), globexKey) }).
			WithTimeout(30 * time.Second).Should(Equal(http.StatusOK))
		for range 20 {
			Expect(post(receiver.url(8080), globexKey)).To(Equal(http.StatusOK), "no limit once the pool's is lifted")
		}
	})
})
