package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// pod is one Deployment's container run as a local process, the way a kubelet would run it: the
// container's command, args and environment exactly as in the pod template, its ConfigMap and
// Secret volumes written as files under a private root (mount paths mapped into it) and its
// container ports mapped to free loopback ports.
type pod struct {
	deployment string
	root       string
	ports      map[int32]int // container port -> local port
	container  corev1.Container
	proc       *process
	generation int64
}

// runPod starts the single container of the named Deployment as it is now.
func runPod(namespace, name string) *pod {
	var d appsv1.Deployment
	Expect(k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &d)).To(Succeed())
	spec := d.Spec.Template.Spec
	Expect(spec.Containers).To(HaveLen(1), "one container per pod")
	c := spec.Containers[0]
	p := &pod{deployment: name, container: c, ports: map[int32]int{}, generation: d.Generation}
	p.root = filepath.Join(workDir, fmt.Sprintf("%s-gen%d", name, d.Generation))

	mounts := map[string]string{} // volume name -> mount path
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	for _, v := range spec.Volumes {
		path, mounted := mounts[v.Name]
		if !mounted {
			continue
		}
		dir := filepath.Join(p.root, path)
		Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
		switch {
		case v.ConfigMap != nil:
			var cm corev1.ConfigMap
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: v.ConfigMap.Name}, &cm)).To(Succeed())
			data := map[string][]byte{}
			for k, v := range cm.Data {
				data[k] = []byte(v)
			}
			writeVolume(dir, v.ConfigMap.Items, data)
		case v.Secret != nil:
			var s corev1.Secret
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: v.Secret.SecretName}, &s)).To(Succeed())
			writeVolume(dir, v.Secret.Items, s.Data)
		case v.EmptyDir != nil:
		default:
			Fail(fmt.Sprintf("volume %s of %s: only ConfigMap, Secret and emptyDir are materialised", v.Name, name))
		}
	}
	for _, cp := range c.Ports {
		p.ports[cp.ContainerPort] = freePort()
	}

	Expect(c.Command).NotTo(BeEmpty())
	Expect(c.Command[0]).To(Equal("/tally"), "the image's binary")
	args := append(append([]string(nil), c.Command[1:]...), c.Args...)
	for i := range args {
		args[i] = p.mapValue(args[i])
	}
	cmd := exec.Command(tallyBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + p.root}
	for _, e := range c.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+p.mapValue(resolveEnv(namespace, e)))
	}
	cmd.Dir = p.root
	p.proc = startProcess(name, cmd)
	return p
}

// writeVolume writes a ConfigMap or Secret volume: the listed items, or every key.
func writeVolume(dir string, items []corev1.KeyToPath, data map[string][]byte) {
	if len(items) == 0 {
		for k := range data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		value, ok := data[it.Key]
		Expect(ok).To(BeTrue(), "key %s", it.Key)
		Expect(os.WriteFile(filepath.Join(dir, it.Path), value, 0o600)).To(Succeed())
	}
}

// mapValue rewrites a value (or the value of a --flag=value argument) that lies under a mount
// path into the pod's root, and a trailing container port to its local port.
func (p *pod) mapValue(v string) string {
	prefix, value := "", v
	if strings.HasPrefix(v, "--") {
		if name, val, ok := strings.Cut(v, "="); ok {
			prefix, value = name+"=", val
		}
	}
	longest := ""
	for _, m := range p.container.VolumeMounts {
		if (value == m.MountPath || strings.HasPrefix(value, m.MountPath+"/")) && len(m.MountPath) > len(longest) {
			longest = m.MountPath
		}
	}
	if longest != "" {
		return prefix + filepath.Join(p.root, value)
	}
	for container, local := range p.ports {
		if host, port, err := net.SplitHostPort(value); err == nil && port == strconv.Itoa(int(container)) {
			if host == "" || host == "0.0.0.0" {
				host = "127.0.0.1"
			}
			return prefix + net.JoinHostPort(host, strconv.Itoa(local))
		}
	}
	return v
}

func resolveEnv(namespace string, e corev1.EnvVar) string {
	if e.ValueFrom == nil {
		return e.Value
	}
	switch {
	case e.ValueFrom.SecretKeyRef != nil:
		var s corev1.Secret
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: e.ValueFrom.SecretKeyRef.Name}, &s)).To(Succeed())
		return string(s.Data[e.ValueFrom.SecretKeyRef.Key])
	case e.ValueFrom.ConfigMapKeyRef != nil:
		var cm corev1.ConfigMap
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: e.ValueFrom.ConfigMapKeyRef.Name}, &cm)).To(Succeed())
		return cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
	case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
		return namespace
	}
	Fail("unsupported env source for " + e.Name)
	return ""
}

// url is the local address of a container port.
func (p *pod) url(containerPort int32) string {
	local, ok := p.ports[containerPort]
	Expect(ok).To(BeTrue(), "container port %d", containerPort)
	return fmt.Sprintf("http://127.0.0.1:%d", local)
}

// waitReady polls the container's readiness probe, as the kubelet does, then reports the
// Deployment available (no deployment controller runs in envtest).
func (p *pod) waitReady(namespace string) {
	probe := p.container.ReadinessProbe
	Expect(probe).NotTo(BeNil(), "%s has a readiness probe", p.deployment)
	Expect(probe.HTTPGet).NotTo(BeNil())
	port := probe.HTTPGet.Port.IntVal
	if probe.HTTPGet.Port.StrVal != "" {
		for _, cp := range p.container.Ports {
			if cp.Name == probe.HTTPGet.Port.StrVal {
				port = cp.ContainerPort
			}
		}
	}
	target := p.url(port) + probe.HTTPGet.Path
	Eventually(func() (int, error) {
		Expect(p.proc.exited()).To(BeFalse(), "%s exited:\n%s", p.proc, string(p.proc.out.Contents()))
		resp, err := http.Get(target)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}).WithTimeout(60*time.Second).WithPolling(200*time.Millisecond).Should(Equal(http.StatusOK), "%s ready", p.deployment)
	markAvailable(namespace, p.deployment)
}

// markAvailable writes the status a deployment controller would once its one pod is ready.
func markAvailable(namespace, name string) {
	Eventually(func() error {
		var d appsv1.Deployment
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &d); err != nil {
			return err
		}
		replicas := int32(1)
		if d.Spec.Replicas != nil {
			replicas = *d.Spec.Replicas
		}
		patch := client.MergeFrom(d.DeepCopy())
		d.Status.ObservedGeneration = d.Generation
		d.Status.Replicas, d.Status.UpdatedReplicas = replicas, replicas
		d.Status.ReadyReplicas, d.Status.AvailableReplicas = replicas, replicas
		d.Status.Conditions = []appsv1.DeploymentCondition{{
			Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable",
			LastUpdateTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}}
		return k8s.Status().Patch(ctx, &d, patch)
	}).Should(Succeed())
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
