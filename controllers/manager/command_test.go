package manager_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	gomegatypes "github.com/onsi/gomega/types"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsserver"
)

func TestNATSURLIsRequired(t *testing.T) {
	cmd := manager.NewCommand()
	cmd.SetArgs([]string{"--leader-elect=false"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--nats-url is required") {
		t.Fatalf("err = %v", err)
	}
}

func TestResourcesFlags(t *testing.T) {
	t.Run("default to the built-in resources", func(t *testing.T) {
		f := manager.NewCommand().Flags()
		if err := f.Parse(nil); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{
			"receiver-resources": `{"limits":{"memory":"256Mi"},"requests":{"cpu":"100m","memory":"64Mi"}}`,
			"worker-resources":   `{"limits":{"memory":"512Mi"},"requests":{"cpu":"100m","memory":"128Mi"}}`,
		} {
			if got := f.Lookup(name).Value.String(); got != want {
				t.Errorf("--%s = %s, want %s", name, got, want)
			}
		}
	})

	for _, tc := range []struct {
		name, value, want string
	}{
		{"requests and limits", `{"requests":{"cpu":"250m","memory":"1Gi"},"limits":{"cpu":2,"memory":"2Gi"}}`,
			`{"limits":{"cpu":"2","memory":"2Gi"},"requests":{"cpu":"250m","memory":"1Gi"}}`},
		{"none at all", `{}`, `{}`},
		{"null, as Helm renders `resources: null`", `null`, `{}`},
		{"extended resources", `{"limits":{"example.com/gpu":"1"}}`, `{"limits":{"example.com/gpu":"1"}}`},
	} {
		t.Run("accepts "+tc.name, func(t *testing.T) {
			f := manager.NewCommand().Flags()
			if err := f.Parse([]string{"--worker-resources=" + tc.value}); err != nil {
				t.Fatal(err)
			}
			if got := f.Lookup("worker-resources").Value.String(); got != tc.want {
				t.Errorf("--worker-resources = %s, want %s", got, tc.want)
			}
		})
	}

	for _, tc := range []struct {
		name, value, complaint string
	}{
		{"not JSON", `cpu=100m`, `want JSON like {"requests":`},
		{"a misspelt field", `{"request":{"cpu":"100m"}}`, `unknown field "request"`},
		{"a quantity that is not one", `{"requests":{"memory":"lots"}}`, `quantities must match`},
		{"an unknown resource", `{"requests":{"cpus":"1"}}`, `requests.cpus: not a container resource`},
		{"a request above its limit", `{"requests":{"memory":"1Gi"},"limits":{"memory":"512Mi"}}`, `requests.memory (1Gi) is more than limits.memory (512Mi)`},
		{"a negative quantity", `{"limits":{"memory":"-1Gi"}}`, `limits.memory must not be negative`},
		{"resource claims", `{"claims":[{"name":"gpu"}]}`, `claims are not supported`},
		{"two objects", `{}{}`, `trailing data`},
	} {
		t.Run("refuses "+tc.name+" at start-up", func(t *testing.T) {
			cmd := manager.NewCommand()
			cmd.SetArgs([]string{"--nats-url=nats://127.0.0.1:1", "--receiver-resources=" + tc.value})
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), "--receiver-resources") || !strings.Contains(err.Error(), tc.complaint) {
				t.Errorf("err = %v, want one naming --receiver-resources and saying %q", err, tc.complaint)
			}
		})
	}
}

// TestManagerCommand runs `tally manager` as a user would (flags only, a kubeconfig file, leader
// election on) against an envtest API server and an embedded NATS server, and checks that it
// elects itself, reconciles a SegmentSource, and serves health and per-object metrics.
func TestManagerCommand(t *testing.T) {
	g := NewWithT(t)
	assets, err := testenv.EnvtestAssets()
	g.Expect(err).NotTo(HaveOccurred())
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	t.Cleanup(func() { _ = env.Stop() })
	cfg, err := env.Start()
	g.Expect(err).NotTo(HaveOccurred())
	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	g.Expect(err).NotTo(HaveOccurred())
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	ns, err := natsserver.Start(natsserver.Options{StoreDir: t.TempDir()})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(ns.Shutdown)

	c, err := client.New(cfg, client.Options{Scheme: manager.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	ctx := context.Background()
	for _, name := range []string{"tally-system", "tenants"} {
		g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
	}
	// A real database: by default the manager migrates it and gives each tenant its own login.
	dbURL, drop, err := testdb.Fresh(ctx, "manager_command")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(drop)
	g.Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "tally-database", Namespace: "tally-system"},
		StringData: map[string]string{"url": dbURL}})).To(Succeed())
	g.Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "nats-creds", Namespace: "tally-system"},
		StringData: map[string]string{"nats.creds": "-----BEGIN NATS USER JWT-----"}})).To(Succeed())

	metricsAddr, probeAddr := freeAddr(t), freeAddr(t)
	cmd := manager.NewCommand()
	cmd.SetArgs([]string{
		"--kubeconfig=" + kubeconfig,
		"--nats-url=" + ns.ClientURL(),
		"--database-secret=tally-database",
		"--nats-creds-secret=nats-creds",
		"--manager-namespace=tally-system",
		"--workload-image=registry.example/tally:v1",
		`--receiver-resources={"requests":{"cpu":"300m","memory":"200Mi"},"limits":{"memory":"400Mi"}}`,
		"--metrics-bind-address=" + metricsAddr,
		"--health-probe-bind-address=" + probeAddr,
		"--leader-elect=true",
		"--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=500ms",
		"--log-level=error",
	})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(runCtx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("manager did not stop")
		}
	})

	g.Eventually(func() error {
		return c.Get(ctx, types.NamespacedName{Namespace: "tally-system", Name: "tally-manager.tally.dev"}, &coordinationv1.Lease{})
	}, "30s").Should(Succeed(), "leader election lease")
	g.Eventually(func() (int, error) { return httpStatus("http://" + probeAddr + "/readyz") }, "10s").Should(Equal(http.StatusOK))

	g.Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "web-segment", Namespace: "tenants", Labels: map[string]string{resources.LabelSourceSecret: "true"}},
		StringData: map[string]string{"writeKey": "k1"}})).To(Succeed())
	// --require-tenant is on by default: the source needs a Tenant listing its namespace.
	g.Expect(c.Create(ctx, &tallyv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "acme"},
		Spec: tallyv1.TenantSpec{Namespaces: []string{"tenants"}}})).To(Succeed())
	src := &tallyv1.SegmentSource{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "tenants"},
		Spec:       tallyv1.SegmentSourceSpec{Tenant: "acme", WriteKeySecretRef: tallyv1.SecretKeyRef{Name: "web-segment"}},
	}
	g.Expect(c.Create(ctx, src)).To(Succeed())
	g.Eventually(func() string {
		got := &tallyv1.SegmentSource{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(src), got); err != nil {
			return err.Error()
		}
		if r := meta.FindStatusCondition(got.Status.Conditions, tallyv1.ConditionReady); r != nil {
			return r.Reason
		}
		return ""
	}, "30s").Should(Equal("RollingOut"))

	recv := &appsv1.Deployment{}
	g.Expect(c.Get(ctx, types.NamespacedName{Namespace: "tenants", Name: "web-receiver"}, recv)).To(Succeed())
	g.Expect(recv.Spec.Template.Spec.Containers[0].Image).To(Equal("registry.example/tally:v1"))
	g.Expect(recv.Spec.Template.Spec.Containers[0].Args).To(ContainElement("--nats-creds=/etc/tally/nats/nats.creds"))
	g.Expect(recv.Spec.Template.Spec.Containers[0].Resources).To(equalSemantically(corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("300m"), corev1.ResourceMemory: resource.MustParse("200Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("400Mi")},
	}), "--receiver-resources")
	worker := &appsv1.Deployment{}
	g.Expect(c.Get(ctx, types.NamespacedName{Namespace: "tenants", Name: "web-worker"}, worker)).To(Succeed())
	g.Expect(worker.Spec.Template.Spec.Containers[0].Resources).To(equalSemantically(corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
	}), "the built-in worker resources, as no --worker-resources was given")
	creds := &corev1.Secret{}
	g.Expect(c.Get(ctx, types.NamespacedName{Namespace: "tenants", Name: "web-nats-creds"}, creds)).To(Succeed())
	g.Expect(string(creds.Data["nats.creds"])).To(Equal("-----BEGIN NATS USER JWT-----"))

	g.Eventually(func() (string, error) { return httpBody("http://" + metricsAddr + "/metrics") }, "10s").Should(
		ContainSubstring(`tally_segmentsource_condition{name="web",namespace="tenants",status="False",type="Ready"} 1`))
}

// equalSemantically compares quantities by value, as the API server may return them in another form.
func equalSemantically(want any) gomegatypes.GomegaMatcher {
	return WithTransform(func(got any) bool { return equality.Semantic.DeepEqual(got, want) }, BeTrue())
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpStatus(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func httpBody(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}
