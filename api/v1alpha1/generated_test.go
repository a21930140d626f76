package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedFilesAreCurrent regenerates the CRD, the manager's ClusterRole and the deepcopy code
// into a temporary directory and compares them with the committed files, so a marker changed
// without `make manifests generate` fails the build instead of shipping a stale CRD or RBAC.
// controller-gen is $CONTROLLER_GEN (the Makefile sets it), else run from the module cache.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	gen := []string{"go", "run", "sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0"}
	if bin := os.Getenv("CONTROLLER_GEN"); bin != "" {
		if _, err := os.Stat(bin); err == nil {
			gen = []string{bin}
		}
	}
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(gen[0], append(gen[1:], args...)...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
	}
	// The same generators and options as `make manifests generate`.
	run("rbac:roleName=manager-role", "crd", "paths=./api/...;./controllers/...",
		"output:crd:artifacts:config="+filepath.Join(tmp, "crd"), "output:rbac:artifacts:config="+filepath.Join(tmp, "rbac"))
	run("object:headerFile=hack/boilerplate.go.txt", "paths=./api/...", "output:object:dir="+filepath.Join(tmp, "object"))

	for generated, committed := range map[string]string{
		"crd/tally.dev_segmentsources.yaml":     "config/crd/bases/tally.dev_segmentsources.yaml",
		"crd/tally.dev_segmentsourcepools.yaml": "config/crd/bases/tally.dev_segmentsourcepools.yaml",
		"crd/tally.dev_tenants.yaml":            "config/crd/bases/tally.dev_tenants.yaml",
		"rbac/role.yaml":                        "config/rbac/role.yaml",
		"object/zz_generated.deepcopy.go":       "api/v1alpha1/zz_generated.deepcopy.go",
	} {
		want, err := os.ReadFile(filepath.Join(tmp, generated))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, committed))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make manifests generate` and commit the result", committed)
		}
	}
	entries, err := os.ReadDir(filepath.Join(tmp, "crd"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Errorf("controller-gen wrote %d CRDs, the test compares 3: add the new ones", len(entries))
	}
}
