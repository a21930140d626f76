package manager

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// resourcesFlag is a flag holding a corev1.ResourceRequirements as JSON, e.g.
// {"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"memory":"256Mi"}}. It is checked when
// set, so a mistyped value stops the manager at start-up instead of reaching every pod it creates.
type resourcesFlag struct{ r *corev1.ResourceRequirements }

func (f resourcesFlag) Type() string { return "json" }

func (f resourcesFlag) String() string {
	if f.r == nil {
		return ""
	}
	b, err := json.Marshal(f.r)
	if err != nil {
		return ""
	}
	return string(b)
}

func (f resourcesFlag) Set(value string) error {
	r, err := parseResources(value)
	if err != nil {
		return err
	}
	*f.r = r
	return nil
}

// parseResources reads a ResourceRequirements from JSON and checks it as the API server would.
// {} (or null) means no resources.
func parseResources(value string) (corev1.ResourceRequirements, error) {
	var r corev1.ResourceRequirements
	dec := json.NewDecoder(bytes.NewReader([]byte(value)))
	dec.DisallowUnknownFields() // "request" instead of "requests" must not be ignored
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf(`want JSON like {"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"memory":"256Mi"}}: %w`, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return r, errors.New("trailing data after the JSON object")
	}
	// Claims name the pod's resource claims, and the operator's pods have none.
	if len(r.Claims) > 0 {
		return r, errors.New("claims are not supported")
	}
	for _, list := range []struct {
		name string
		l    corev1.ResourceList
	}{{"requests", r.Requests}, {"limits", r.Limits}} {
		for _, name := range slices.Sorted(maps.Keys(list.l)) {
			if !containerResourceName(name) {
				return r, fmt.Errorf("%s.%s: not a container resource (want cpu, memory, ephemeral-storage, hugepages-<size> or a domain-prefixed extended resource)", list.name, name)
			}
			if q := list.l[name]; q.Sign() < 0 {
				return r, fmt.Errorf("%s.%s must not be negative (%s)", list.name, name, q.String())
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(r.Requests)) {
		request := r.Requests[name]
		if limit, ok := r.Limits[name]; ok && request.Cmp(limit) > 0 {
			return r, fmt.Errorf("requests.%s (%s) is more than limits.%s (%s)", name, request.String(), name, limit.String())
		}
	}
	return r, nil
}

// containerResourceName accepts the names the API server accepts in a container's resources, so
// "cpus" is refused here rather than by every Deployment the operator applies.
func containerResourceName(name corev1.ResourceName) bool {
	switch name {
	case corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage:
		return true
	}
	return strings.HasPrefix(string(name), corev1.ResourceHugePagesPrefix) || strings.Contains(string(name), "/")
}
