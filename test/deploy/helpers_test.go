package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// helmVersion is the Helm release the tests (and the Makefile) run, built from the Go module proxy.
const helmVersion = "v3.22.0"

// helmBinary is the helm executable the tests run, set up by installHelm.
var helmBinary string

// installHelm sets helmBinary to $HELM when set, else installs helm.sh/helm/v3/cmd/helm@helmVersion
// from the Go module proxy into dir (fast when the Go build cache has it already).
func installHelm(dir string) {
	GinkgoHelper()
	if bin := os.Getenv("HELM"); bin != "" {
		helmBinary = bin
		return
	}
	cmd := exec.Command("go", "install", "helm.sh/helm/v3/cmd/helm@"+helmVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "go install helm.sh/helm/v3/cmd/helm@%s: %s", helmVersion, out)
	helmBinary = filepath.Join(dir, "helm")
}

// helm runs the helm CLI from the repository root, with Helm's own cache, config and data
// directories in a temporary directory.
func helm(args ...string) (string, error) {
	cmd := exec.Command(helmBinary, args...)
	home := GinkgoT().TempDir()
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// helmTemplate renders charts/tally as release "tally" in namespace with the given extra flags.
func helmTemplate(namespace string, flags ...string) (string, error) {
	return helm(append([]string{"template", "tally", "charts/tally", "--namespace", namespace}, flags...)...)
}

// mustHelmTemplate is helmTemplate that fails the test on error.
func mustHelmTemplate(namespace string, flags ...string) string {
	GinkgoHelper()
	out, err := helmTemplate(namespace, flags...)
	Expect(err).NotTo(HaveOccurred())
	return out
}

// kubectl runs the envtest kubectl against the envtest API server.
type kubectl struct {
	path, kubeconfig string
}

// Run runs kubectl with stdin and returns its combined output.
func (k *kubectl) Run(stdin string, args ...string) (string, error) {
	cmd := exec.Command(k.path, append([]string{"--kubeconfig", k.kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustApply applies manifests for real with server-side apply.
func (k *kubectl) MustApply(manifests string) {
	GinkgoHelper()
	_, err := k.Run(manifests, "apply", "--server-side", "--force-conflicts", "--field-manager=deploy-test", "-f", "-")
	Expect(err).NotTo(HaveOccurred())
}

// DryRun applies manifests with server-side dry-run: the API server validates, defaults and admits
// every object (schema, CRD validation, RBAC escalation, Pod Security) without storing it. A
// warning, such as a Pod Security "would violate" warning, is an error. (kubectl's
// --warnings-as-errors is passed too, but `apply --server-side` exits 0 despite it, so the output
// is checked as well.)
func (k *kubectl) DryRun(manifests string) (string, error) {
	out, err := k.Run(manifests, "apply", "--server-side", "--dry-run=server", "--force-conflicts",
		"--field-manager=deploy-test", "--warnings-as-errors", "-f", "-")
	if err == nil && strings.Contains(out, "Warning:") {
		err = fmt.Errorf("kubectl apply --dry-run=server: warnings from the API server:\n%s", out)
	}
	return out, err
}

// restrictedNamespace is a Namespace that enforces and warns on the restricted Pod Security Standard.
func restrictedNamespace(name string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
    pod-security.kubernetes.io/warn: restricted
    pod-security.kubernetes.io/warn-version: latest
`, name)
}

// readFile reads a file relative to the repository root, or to this package for testdata/.
func readFile(path string) string {
	GinkgoHelper()
	if !strings.HasPrefix(path, "testdata/") {
		path = filepath.Join(repoRoot, path)
	}
	data, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	return string(data)
}

// parseObjects splits a multi-document YAML stream into objects, skipping empty documents.
func parseObjects(manifests string) []*unstructured.Unstructured {
	GinkgoHelper()
	var objects []*unstructured.Unstructured
	decoder := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var raw map[string]any
		err := decoder.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return objects
		}
		Expect(err).NotTo(HaveOccurred())
		if len(raw) == 0 {
			continue
		}
		objects = append(objects, &unstructured.Unstructured{Object: raw})
	}
}

// toYAML renders objects as one multi-document YAML stream.
func toYAML(objects ...*unstructured.Unstructured) string {
	GinkgoHelper()
	var b strings.Builder
	for _, o := range objects {
		data, err := yaml.Marshal(o.Object)
		Expect(err).NotTo(HaveOccurred())
		b.WriteString("---\n")
		b.Write(data)
	}
	return b.String()
}

// kindsOf lists "Kind/name" of every object.
func kindsOf(objects []*unstructured.Unstructured) []string {
	var kinds []string
	for _, o := range objects {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
	}
	return kinds
}

// find returns the only object of kind (and name, unless empty); the test fails unless there is one.
func find(objects []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	GinkgoHelper()
	var found []*unstructured.Unstructured
	for _, o := range objects {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			found = append(found, o)
		}
	}
	Expect(found).To(HaveLen(1), "exactly one %s %q in %v", kind, name, kindsOf(objects))
	return found[0]
}

// convert turns an unstructured object into a typed one.
func convert[T any](o *unstructured.Unstructured) *T {
	GinkgoHelper()
	var typed T
	Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &typed)).To(Succeed())
	return &typed
}

func deployment(objects []*unstructured.Unstructured) *appsv1.Deployment {
	GinkgoHelper()
	return convert[appsv1.Deployment](find(objects, "Deployment", ""))
}

func crdOf(o *unstructured.Unstructured) *apiextensionsv1.CustomResourceDefinition {
	GinkgoHelper()
	return convert[apiextensionsv1.CustomResourceDefinition](o)
}

// generatedRole is config/rbac/role.yaml, the ClusterRole controller-gen generates for the manager.
func generatedRole() *rbacv1.ClusterRole {
	GinkgoHelper()
	return convert[rbacv1.ClusterRole](find(parseObjects(readFile("config/rbac/role.yaml")), "ClusterRole", ""))
}

// generatedCRD is the SegmentSource CRD generated into config/crd/bases.
func generatedCRD() *apiextensionsv1.CustomResourceDefinition {
	GinkgoHelper()
	return crdOf(find(parseObjects(readFile("config/crd/bases/tally.dev_segmentsources.yaml")), "CustomResourceDefinition", ""))
}

// generatedCRDs are the CRDs generated into config/crd/bases (SegmentSource, Tenant).
func generatedCRDs() []*apiextensionsv1.CustomResourceDefinition {
	GinkgoHelper()
	return []*apiextensionsv1.CustomResourceDefinition{
		generatedCRD(),
		crdOf(find(parseObjects(readFile("config/crd/bases/tally.dev_tenants.yaml")), "CustomResourceDefinition", "")),
	}
}

// podsFromTemplates turns the pod template of every Deployment into a Pod in the Deployment's
// namespace. Pod Security admission only warns about Deployments but refuses violating Pods, so
// dry-running these Pods proves the pods the Deployments create would be admitted.
func podsFromTemplates(objects []*unstructured.Unstructured) []*unstructured.Unstructured {
	GinkgoHelper()
	var pods []*unstructured.Unstructured
	for _, o := range objects {
		if o.GetKind() != "Deployment" {
			continue
		}
		d := convert[appsv1.Deployment](o)
		pod := corev1.Pod{ObjectMeta: d.Spec.Template.ObjectMeta, Spec: d.Spec.Template.Spec}
		pod.APIVersion, pod.Kind = "v1", "Pod"
		pod.Name, pod.Namespace = d.Name+"-pod", d.Namespace
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&pod)
		Expect(err).NotTo(HaveOccurred())
		pods = append(pods, &unstructured.Unstructured{Object: raw})
	}
	Expect(pods).NotTo(BeEmpty())
	return pods
}

// expectRestrictedSecurity asserts the settings the restricted Pod Security Standard requires of
// every container, and a read-only root filesystem.
func expectRestrictedSecurity(spec corev1.PodSpec) {
	GinkgoHelper()
	Expect(spec.SecurityContext).NotTo(BeNil())
	Expect(spec.SecurityContext.RunAsNonRoot).To(HaveValue(BeTrue()))
	Expect(spec.SecurityContext.SeccompProfile).NotTo(BeNil())
	Expect(spec.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
	Expect(spec.Containers).NotTo(BeEmpty())
	for _, c := range spec.Containers {
		sc := c.SecurityContext
		Expect(sc).NotTo(BeNil(), c.Name)
		Expect(sc.AllowPrivilegeEscalation).To(HaveValue(BeFalse()), c.Name)
		Expect(sc.ReadOnlyRootFilesystem).To(HaveValue(BeTrue()), c.Name)
		Expect(sc.Privileged).To(Or(BeNil(), HaveValue(BeFalse())), c.Name)
		Expect(sc.Capabilities).NotTo(BeNil(), c.Name)
		Expect(sc.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")), c.Name)
		Expect(sc.Capabilities.Add).To(BeEmpty(), c.Name)
	}
}

// envVar returns the EnvVar called name of container c.
func envVar(c corev1.Container, name string) *corev1.EnvVar {
	GinkgoHelper()
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	Fail(fmt.Sprintf("container %s has no env %s", c.Name, name))
	return nil
}
