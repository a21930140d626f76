package resources_test

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/tallyhq/tally/controllers/resources"
)

// With users issued per component, each pod mounts its own creds and never the other's or the
// shared copy.
func TestEachComponentMountsItsOwnNATSUser(t *testing.T) {
	in := inputs(sample())
	in.NATSCreds = &resources.SecretKey{Name: "acme-web-nats-creds", Key: "nats.creds", Hash: "shared"}
	in.ReceiverNATSCreds = &resources.SecretKey{Name: "acme-web-nats-receiver", Key: "nats.creds", Hash: "r"}
	in.WorkerNATSCreds = &resources.SecretKey{Name: "acme-web-nats-worker", Key: "nats.creds", Hash: "w"}
	for _, c := range []struct {
		dep        *appsv1.Deployment
		secret     string
		hash       string
		wantsOther string
	}{
		{typed[appsv1.Deployment](t, resources.ReceiverDeployment(in)), "acme-web-nats-receiver", "r", "acme-web-nats-worker"},
		{typed[appsv1.Deployment](t, resources.WorkerDeployment(in)), "acme-web-nats-worker", "w", "acme-web-nats-receiver"},
	} {
		var mounted []string
		for _, v := range c.dep.Spec.Template.Spec.Volumes {
			if v.Secret != nil {
				mounted = append(mounted, v.Secret.SecretName)
			}
		}
		for _, name := range mounted {
			if name == c.wantsOther || name == "acme-web-nats-creds" {
				t.Errorf("%s mounts %s", c.dep.Name, name)
			}
		}
		found := false
		for _, name := range mounted {
			found = found || name == c.secret
		}
		if !found {
			t.Errorf("%s mounts %v, not %s", c.dep.Name, mounted, c.secret)
		}
		if got := c.dep.Spec.Template.Annotations[resources.AnnotationNATSCredsHash]; got != c.hash {
			t.Errorf("%s nats creds hash = %q, want %q (a re-issued user rolls the pods)", c.dep.Name, got, c.hash)
		}
	}
}
