package local

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
)

// poolRef is pool.Ref, for code where a Postgres pool named pool hides the package.
type poolRef = pool.Ref

// poolMembership reads the SegmentSourcePools of dir and returns the pool of each active source
// that names one ("namespace/name" of the source). A source whose pool is not in dir, or does
// not admit its namespace, is an error: in a cluster it would be Stalled and served by nobody.
// Selector pools match the labels of the Namespace manifests in dir (none when a namespace has
// no manifest). A member of sources without a rate limit of its own gets its pool's, as the
// operator gives it.
func poolMembership(dir string, sources []*source.Config) (map[string]pool.Ref, error) {
	pools := map[pool.Ref]*tallyv1.SegmentSourcePool{}
	namespaces := map[string]labels.Set{}
	var members []tallyv1.SegmentSource
	err := eachManifest(dir, func(file string, meta metav1.TypeMeta, doc []byte) error {
		switch {
		case meta.Kind == "SegmentSourcePool" && meta.APIVersion == tallyv1.GroupVersion.String():
			var p tallyv1.SegmentSourcePool
			if err := yaml.UnmarshalStrict(doc, &p); err != nil {
				return fmt.Errorf("%s: SegmentSourcePool: %w", file, err)
			}
			defaultNamespace(&p.Namespace)
			pools[pool.Ref{Namespace: p.Namespace, Name: p.Name}] = &p
		case meta.Kind == "Namespace" && meta.APIVersion == "v1":
			var ns corev1.Namespace
			if err := yaml.Unmarshal(doc, &ns); err != nil {
				return fmt.Errorf("%s: Namespace: %w", file, err)
			}
			namespaces[ns.Name] = ns.Labels
		case meta.Kind == "SegmentSource" && meta.APIVersion == tallyv1.GroupVersion.String():
			var s tallyv1.SegmentSource
			if err := yaml.Unmarshal(doc, &s); err != nil { // LoadManifests checked it strictly
				return fmt.Errorf("%s: SegmentSource: %w", file, err)
			}
			defaultNamespace(&s.Namespace)
			if s.Spec.Pool != nil && !s.Spec.Suspend {
				members = append(members, s)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	membership := map[string]pool.Ref{}
	for i := range members {
		s := &members[i]
		ns, name, _ := s.PoolKey()
		ref := pool.Ref{Namespace: ns, Name: name}
		p, ok := pools[ref]
		if !ok {
			return nil, fmt.Errorf("SegmentSource %s/%s: SegmentSourcePool %s not found in %s", s.Namespace, s.Name, ref, dir)
		}
		if !admits(p, s.Namespace, namespaces[s.Namespace]) {
			return nil, fmt.Errorf("SegmentSource %s/%s: SegmentSourcePool %s does not admit namespace %s (spec.allowedNamespaces)",
				s.Namespace, s.Name, ref, s.Namespace)
		}
		membership[s.Namespace+"/"+s.Name] = ref
	}
	for _, c := range sources {
		if ref, ok := membership[c.String()]; ok && c.RateLimit == nil {
			c.RateLimit = resources.RateLimit(pools[ref].Spec.Receiver.RateLimit)
		}
	}
	return membership, nil
}

// admits applies a pool's allowedNamespaces as the operator does.
func admits(p *tallyv1.SegmentSourcePool, namespace string, nsLabels labels.Set) bool {
	allowed := p.Spec.AllowedNamespaces
	switch allowed.FromOrDefault() {
	case tallyv1.NamespacesFromAll:
		return true
	case tallyv1.NamespacesFromSelector:
		sel, err := metav1.LabelSelectorAsSelector(allowed.Selector)
		return err == nil && sel.Matches(nsLabels)
	default:
		return p.Namespace == namespace
	}
}
