package resources_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/source"
)

func sample(mutate ...func(*tallyv1.SegmentSource)) *tallyv1.SegmentSource {
	s := &tallyv1.SegmentSource{
		ObjectMeta: metav1.ObjectMeta{Name: "acme-web", Namespace: "tenants", UID: types.UID("uid-1")},
		Spec: tallyv1.SegmentSourceSpec{
			Tenant:            "acme",
			WriteKeySecretRef: tallyv1.SecretKeyRef{Name: "acme-segment", Key: "writeKey"},
			AccountProperty:   "accountId",
			IgnoredEvents:     []string{"Heartbeat"},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func inputs(s *tallyv1.SegmentSource) resources.Inputs {
	return resources.Inputs{
		Source: s, Image: "img:1", NATSURL: "nats://nats:4222",
		ConfigHash: "cfg", WriteKeyHash: "wk",
		Database: resources.SecretKey{Name: "acme-web-database", Key: "url", Hash: "db"},
	}
}

// typed turns an apply configuration into the API type it configures, as the API server would
// read it, so tests assert on familiar structs.
func typed[T any](t *testing.T, ac any) *T {
	t.Helper()
	raw, err := json.Marshal(ac)
	if err != nil {
		t.Fatal(err)
	}
	var out T
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

func int32p(i int32) *int32 { return &i }

func TestReplicas(t *testing.T) {
	for _, tc := range []struct {
		name           string
		mutate         func(*tallyv1.SegmentSource)
		receiver       *int32
		worker         int32
		pdb, hpa       bool
		pdbDescription string
	}{
		{name: "defaults", mutate: func(*tallyv1.SegmentSource) {}, receiver: int32p(1), worker: 1},
		{name: "fixed replicas", mutate: func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.Replicas, s.Spec.Worker.Replicas = int32p(3), int32p(2)
		}, receiver: int32p(3), worker: 2, pdb: true},
		{name: "autoscaled: the HPA owns replicas", mutate: func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.Replicas = int32p(3)
			s.Spec.Receiver.Autoscaling = &tallyv1.Autoscaling{MinReplicas: 2, MaxReplicas: 5}
		}, receiver: nil, worker: 1, pdb: true, hpa: true},
		{name: "autoscaled to at most one: no PDB", mutate: func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.Autoscaling = &tallyv1.Autoscaling{MinReplicas: 1, MaxReplicas: 1}
		}, receiver: nil, worker: 1, hpa: true},
		{name: "suspended: zero, no HPA, no PDB", mutate: func(s *tallyv1.SegmentSource) {
			s.Spec.Suspend = true
			s.Spec.Receiver.Replicas = int32p(3)
			s.Spec.Receiver.Autoscaling = &tallyv1.Autoscaling{MinReplicas: 2, MaxReplicas: 5}
		}, receiver: int32p(0), worker: 0},
		{name: "zero replicas requested", mutate: func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.Replicas, s.Spec.Worker.Replicas = int32p(0), int32p(0)
		}, receiver: int32p(0), worker: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sample(tc.mutate)
			recv := typed[appsv1.Deployment](t, resources.ReceiverDeployment(inputs(s)))
			switch {
			case tc.receiver == nil && recv.Spec.Replicas != nil:
				t.Errorf("receiver replicas = %d, want unset (HPA)", *recv.Spec.Replicas)
			case tc.receiver != nil && (recv.Spec.Replicas == nil || *recv.Spec.Replicas != *tc.receiver):
				t.Errorf("receiver replicas = %v, want %d", recv.Spec.Replicas, *tc.receiver)
			}
			worker := typed[appsv1.Deployment](t, resources.WorkerDeployment(inputs(s)))
			if *worker.Spec.Replicas != tc.worker {
				t.Errorf("worker replicas = %d, want %d", *worker.Spec.Replicas, tc.worker)
			}
			if got := resources.WantsReceiverPDB(s); got != tc.pdb {
				t.Errorf("PDB = %v, want %v", got, tc.pdb)
			}
			if got := resources.WantsReceiverHPA(s); got != tc.hpa {
				t.Errorf("HPA = %v, want %v", got, tc.hpa)
			}
		})
	}
}

func TestPodsAreHardened(t *testing.T) {
	s := sample()
	for name, ac := range map[string]any{
		"receiver": resources.ReceiverDeployment(inputs(s)),
		"worker":   resources.WorkerDeployment(inputs(s)),
	} {
		t.Run(name, func(t *testing.T) {
			d := typed[appsv1.Deployment](t, ac)
			pod := d.Spec.Template.Spec
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Error("service account token is mounted")
			}
			psc := pod.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil ||
				psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("pod security context = %+v", psc)
			}
			c := pod.Containers[0]
			sc := c.SecurityContext
			if sc == nil || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("container security context = %+v", sc)
			}
			if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/tmp" }) {
				t.Error("no writable /tmp")
			}
			if d.Spec.Strategy.RollingUpdate == nil || d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0 {
				t.Error("a rollout may take a ready pod away before its replacement is ready")
			}
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
				t.Error("probes missing")
			}
			for k, v := range map[string]string{"app.kubernetes.io/name": "tally", "app.kubernetes.io/instance": "acme-web",
				"app.kubernetes.io/component": name, "app.kubernetes.io/managed-by": "tally-operator", "app.kubernetes.io/part-of": "tally"} {
				if d.Labels[k] != v || d.Spec.Template.Labels[k] != v {
					t.Errorf("label %s = %q/%q, want %q", k, d.Labels[k], d.Spec.Template.Labels[k], v)
				}
			}
			if len(d.OwnerReferences) != 1 || d.OwnerReferences[0].UID != "uid-1" || !*d.OwnerReferences[0].Controller {
				t.Errorf("owner references = %+v", d.OwnerReferences)
			}
		})
	}
}

func TestContainerContract(t *testing.T) {
	s := sample(func(s *tallyv1.SegmentSource) {
		s.Spec.WriteKeySecretRef.Key = "keys"
		s.Spec.Worker.BatchSize = 250
		s.Spec.Receiver.Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}
	})
	in := inputs(s)
	in.NATSCreds = &resources.SecretKey{Name: "acme-web-nats-creds", Key: "nats.creds", Hash: "nc"}

	recv := typed[appsv1.Deployment](t, resources.ReceiverDeployment(in))
	rc := recv.Spec.Template.Spec.Containers[0]
	wantArgs := []string{"receiver", "--listen=:8080", "--nats-url=nats://nats:4222",
		"--source-config=/etc/tally/source/source.json", "--write-keys-file=/etc/tally/write-keys/keys",
		"--shutdown-delay=5s", "--nats-creds=/etc/tally/nats/nats.creds"}
	if !slices.Equal(rc.Args, wantArgs) || !slices.Equal(rc.Command, []string{"/tally"}) || rc.Image != "img:1" {
		t.Errorf("receiver command %v args %v image %s", rc.Command, rc.Args, rc.Image)
	}
	if rc.Resources.Requests.Cpu().String() != "100m" {
		t.Errorf("receiver resources = %v", rc.Resources)
	}
	ann := recv.Spec.Template.Annotations
	if ann[resources.AnnotationConfigHash] != "cfg" || ann[resources.AnnotationWriteKeyHash] != "wk" || ann[resources.AnnotationNATSCredsHash] != "nc" {
		t.Errorf("receiver pod annotations = %v", ann)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range recv.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	if vols["config"].ConfigMap == nil || vols["config"].ConfigMap.Name != "acme-web-config" {
		t.Errorf("config volume = %+v", vols["config"])
	}
	if wk := vols["write-keys"].Secret; wk == nil || wk.SecretName != "acme-segment" || wk.Items[0].Key != "keys" {
		t.Errorf("write-keys volume = %+v", vols["write-keys"])
	}
	if nc := vols["nats-creds"].Secret; nc == nil || nc.SecretName != "acme-web-nats-creds" {
		t.Errorf("nats-creds volume = %+v", vols["nats-creds"])
	}

	worker := typed[appsv1.Deployment](t, resources.WorkerDeployment(in))
	wc := worker.Spec.Template.Spec.Containers[0]
	wantArgs = []string{"worker", "--nats-url=nats://nats:4222", "--source-config=/etc/tally/source/source.json",
		"--batch-size=250", "--metrics-listen=:9090", "--nats-creds=/etc/tally/nats/nats.creds"}
	if !slices.Equal(wc.Args, wantArgs) {
		t.Errorf("worker args %v", wc.Args)
	}
	if len(wc.Env) != 1 || wc.Env[0].Name != "TALLY_DATABASE_URL" || wc.Env[0].ValueFrom.SecretKeyRef.Name != "acme-web-database" ||
		wc.Env[0].ValueFrom.SecretKeyRef.Key != "url" {
		t.Errorf("worker env = %+v", wc.Env)
	}
	if wc.LivenessProbe.HTTPGet.Port.StrVal != "metrics" || wc.Ports[0].ContainerPort != 9090 {
		t.Errorf("worker probes/ports = %+v %+v", wc.LivenessProbe, wc.Ports)
	}
	if _, ok := worker.Spec.Template.Annotations[resources.AnnotationWriteKeyHash]; ok {
		t.Error("workers roll on write key changes, but never see the keys")
	}
	for _, v := range worker.Spec.Template.Spec.Volumes {
		if v.Name == "write-keys" {
			t.Error("write keys mounted into workers")
		}
	}
}

func TestDefaultResources(t *testing.T) {
	mustList := func(pairs ...string) corev1.ResourceList {
		l := corev1.ResourceList{}
		for i := 0; i < len(pairs); i += 2 {
			l[corev1.ResourceName(pairs[i])] = resource.MustParse(pairs[i+1])
		}
		return l
	}
	receiverDefault := corev1.ResourceRequirements{Requests: mustList("cpu", "250m", "memory", "96Mi"), Limits: mustList("memory", "300Mi")}
	workerDefault := corev1.ResourceRequirements{Requests: mustList("cpu", "500m", "memory", "1Gi"), Limits: mustList("memory", "2Gi")}
	for _, tc := range []struct {
		name                     string
		mutate                   func(*tallyv1.SegmentSource)
		receiverDefault          corev1.ResourceRequirements
		workerDefault            corev1.ResourceRequirements
		wantReceiver, wantWorker corev1.ResourceRequirements
	}{
		{
			name:            "a source without resources gets the manager's defaults",
			mutate:          func(*tallyv1.SegmentSource) {},
			receiverDefault: receiverDefault, workerDefault: workerDefault,
			wantReceiver: receiverDefault, wantWorker: workerDefault,
		},
		{
			name: "the source's resources win, as a whole",
			mutate: func(s *tallyv1.SegmentSource) {
				s.Spec.Receiver.Resources = corev1.ResourceRequirements{Requests: mustList("cpu", "1")}
				s.Spec.Worker.Resources = corev1.ResourceRequirements{Limits: mustList("memory", "4Gi")}
			},
			receiverDefault: receiverDefault, workerDefault: workerDefault,
			wantReceiver: corev1.ResourceRequirements{Requests: mustList("cpu", "1")},
			wantWorker:   corev1.ResourceRequirements{Limits: mustList("memory", "4Gi")},
		},
		{
			name: "each component falls back on its own",
			mutate: func(s *tallyv1.SegmentSource) {
				s.Spec.Worker.Resources = corev1.ResourceRequirements{Requests: mustList("memory", "3Gi")}
			},
			receiverDefault: receiverDefault, workerDefault: workerDefault,
			wantReceiver: receiverDefault,
			wantWorker:   corev1.ResourceRequirements{Requests: mustList("memory", "3Gi")},
		},
		{
			name:   "no defaults ({} on the manager) and none in the spec: none",
			mutate: func(*tallyv1.SegmentSource) {},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := inputs(sample(tc.mutate))
			in.ReceiverResources, in.WorkerResources = tc.receiverDefault, tc.workerDefault
			recv := typed[appsv1.Deployment](t, resources.ReceiverDeployment(in)).Spec.Template.Spec.Containers[0]
			if !equalResources(recv.Resources, tc.wantReceiver) {
				t.Errorf("receiver resources = %+v, want %+v", recv.Resources, tc.wantReceiver)
			}
			worker := typed[appsv1.Deployment](t, resources.WorkerDeployment(in)).Spec.Template.Spec.Containers[0]
			if !equalResources(worker.Resources, tc.wantWorker) {
				t.Errorf("worker resources = %+v, want %+v", worker.Resources, tc.wantWorker)
			}
		})
	}
}

func TestBuiltInDefaultResources(t *testing.T) {
	for name, r := range map[string]corev1.ResourceRequirements{
		"receiver": resources.DefaultReceiverResources(),
		"worker":   resources.DefaultWorkerResources(),
	} {
		if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() {
			t.Errorf("%s: requests = %v, want cpu and memory so the scheduler can place the pod", name, r.Requests)
		}
		if r.Limits.Memory().Cmp(*r.Requests.Memory()) < 0 {
			t.Errorf("%s: memory limit %v below the request %v", name, r.Limits.Memory(), r.Requests.Memory())
		}
		if _, ok := r.Limits[corev1.ResourceCPU]; ok {
			t.Errorf("%s: a CPU limit throttles the pod", name)
		}
	}
	// Callers get a copy: changing one must not change the next.
	r := resources.DefaultReceiverResources()
	r.Requests[corev1.ResourceCPU] = resource.MustParse("8")
	if fresh := resources.DefaultReceiverResources(); fresh.Requests.Cpu().String() != "100m" {
		got := fresh.Requests.Cpu().String()
		t.Errorf("default receiver cpu request changed to %s", got)
	}
}

func equalResources(a, b corev1.ResourceRequirements) bool {
	equal := func(x, y corev1.ResourceList) bool {
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || v.Cmp(w) != 0 {
				return false
			}
		}
		return true
	}
	return equal(a.Requests, b.Requests) && equal(a.Limits, b.Limits)
}

// TestReceiverStopsGracefully checks the pod spec leaves a stopping receiver the time its command
// needs: the shutdown delay it is started with (unready but serving), then its requests in
// flight, each waiting at most the receiver's publish timeout for PubAcks.
func TestReceiverStopsGracefully(t *testing.T) {
	pod := typed[appsv1.Deployment](t, resources.ReceiverDeployment(inputs(sample()))).Spec.Template.Spec
	c := pod.Containers[0]
	var delay time.Duration
	for _, arg := range c.Args {
		if v, ok := strings.CutPrefix(arg, "--shutdown-delay="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatal(err)
			}
			delay = d
		}
	}
	if delay < 3*time.Second {
		t.Errorf("--shutdown-delay = %v: too short for endpoints to stop routing to the pod", delay)
	}
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if need := delay + source.DefaultPublishTimeout + 10*time.Second; grace < need {
		t.Errorf("terminationGracePeriodSeconds = %v, want at least %v (delay + publish timeout + margin)", grace, need)
	}
	p := c.ReadinessProbe
	if detect := time.Duration(p.PeriodSeconds*p.FailureThreshold+p.TimeoutSeconds) * time.Second; detect >= delay {
		t.Errorf("readiness probe notices a 503 after up to %v, not within the %v delay", detect, delay)
	}
}

func TestConfigMapNeverHoldsWriteKeys(t *testing.T) {
	s := sample()
	data, err := resources.ConfigData(s)
	if err != nil {
		t.Fatal(err)
	}
	cm := typed[corev1.ConfigMap](t, resources.ConfigMap(s, data))
	if cm.Name != "acme-web-config" || len(cm.Data) != 1 {
		t.Fatalf("ConfigMap %s data keys %v", cm.Name, cm.Data)
	}
	cfg, err := source.DecodeConfig([]byte(cm.Data[source.ConfigFileName]))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Tenant != "acme" || cfg.AccountProperty != "accountId" || !slices.Equal(cfg.IgnoredEvents, []string{"Heartbeat"}) || len(cfg.WriteKeys) != 0 {
		t.Errorf("config = %+v", cfg)
	}
	if strings.Contains(cm.Data[source.ConfigFileName], "acme-segment") {
		t.Error("the ConfigMap names the write key Secret")
	}
}

func TestServicePDBAndHPA(t *testing.T) {
	s := sample(func(s *tallyv1.SegmentSource) {
		s.Spec.Receiver.Port = 9000
		s.Spec.Receiver.ServiceType = corev1.ServiceTypeLoadBalancer
		s.Spec.Receiver.Autoscaling = &tallyv1.Autoscaling{MinReplicas: 2, MaxReplicas: 8, TargetCPUUtilizationPercentage: 55}
	})
	svc := typed[corev1.Service](t, resources.ReceiverService(s))
	if svc.Name != "acme-web-receiver" || svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.Ports[0].Port != 9000 ||
		svc.Spec.Ports[0].TargetPort.StrVal != "http" || svc.Spec.Selector["app.kubernetes.io/component"] != "receiver" {
		t.Errorf("service = %+v", svc.Spec)
	}
	if got := resources.Endpoint(s); got != "http://acme-web-receiver.tenants.svc:9000" {
		t.Errorf("endpoint = %s", got)
	}
	pdb := typed[policyv1.PodDisruptionBudget](t, resources.ReceiverPDB(s))
	if pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.Selector.MatchLabels["app.kubernetes.io/component"] != "receiver" {
		t.Errorf("pdb = %+v", pdb.Spec)
	}
	hpa := typed[autoscalingv2.HorizontalPodAutoscaler](t, resources.ReceiverHPA(s))
	if *hpa.Spec.MinReplicas != 2 || hpa.Spec.MaxReplicas != 8 || hpa.Spec.ScaleTargetRef.Name != "acme-web-receiver" ||
		*hpa.Spec.Metrics[0].Resource.Target.AverageUtilization != 55 {
		t.Errorf("hpa = %+v", hpa.Spec)
	}
}

func TestHashIsStableAndSensitive(t *testing.T) {
	a := resources.Hash(map[string][]byte{"a": []byte("1"), "b": []byte("2")})
	b := resources.Hash(map[string][]byte{"b": []byte("2"), "a": []byte("1")})
	c := resources.Hash(map[string][]byte{"a": []byte("12"), "b": []byte("")})
	if a != b {
		t.Error("hash depends on map order")
	}
	if a == c {
		t.Error("hash does not separate keys from values")
	}
}

// With --receiver-atomic-batches the manager runs every receiver, a source's own and a pool's,
// with group commit; without it, none.
func TestReceiversPublishWithGroupCommitOnlyWhenAsked(t *testing.T) {
	pool := &tallyv1.SegmentSourcePool{ObjectMeta: metav1.ObjectMeta{Name: "shared", Namespace: "platform", UID: types.UID("uid-p")}}
	for _, on := range []bool{false, true} {
		in := inputs(sample())
		in.AtomicBatches = on
		pin := resources.PoolInputs{Pool: pool, Image: "img:1", NATSURL: "nats://nats:4222", AtomicBatches: on}
		for name, d := range map[string]*appsv1.Deployment{
			"source receiver": typed[appsv1.Deployment](t, resources.ReceiverDeployment(in)),
			"pool receiver":   typed[appsv1.Deployment](t, resources.PoolReceiverDeployment(pin)),
		} {
			if got := slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--atomic-batches"); got != on {
				t.Errorf("%s with AtomicBatches %v: --atomic-batches in args = %v", name, on, got)
			}
		}
	}
}
