package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Values of allowedNamespaces.from, as Gateway API's allowedRoutes.namespaces.from.
const (
	// NamespacesFromSame admits sources of the pool's own namespace only.
	NamespacesFromSame = "Same"
	// NamespacesFromAll admits sources of every namespace.
	NamespacesFromAll = "All"
	// NamespacesFromSelector admits sources of the namespaces whose labels match the selector.
	NamespacesFromSelector = "Selector"
)

// AllowedNamespaces says which namespaces' SegmentSources may join the pool, modelled on Gateway
// API's allowedRoutes.namespaces. Tenant rules still apply to every member.
// +kubebuilder:validation:XValidation:rule="(has(self.from) && self.from == 'Selector') == has(self.selector)",message="selector is required when from is Selector, and only then"
type AllowedNamespaces struct {
	// From is Same (the pool's namespace), All, or Selector (namespaces matching selector).
	// +kubebuilder:validation:Enum=Same;All;Selector
	// +kubebuilder:default=Same
	// +optional
	From string `json:"from,omitempty"`

	// Selector of the namespaces admitted when from is Selector.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// PoolWorkerSpec shapes the pool's worker Deployment, which applies every member's messages.
type PoolWorkerSpec struct {
	// Replicas when autoscaling is not set.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=1
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Resources of the worker container; the operator's default (--worker-resources) when
	// neither requests nor limits are set.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Autoscaling, when set, has an HPA own the workers' replica count (CPU).
	// +optional
	Autoscaling *Autoscaling `json:"autoscaling,omitempty"`

	// BatchSize is the number of messages a worker fetches and commits in one transaction.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	BatchSize int32 `json:"batchSize,omitempty"`
}

// SegmentSourcePoolSpec is a set of shared receivers and workers.
type SegmentSourcePoolSpec struct {
	// Receiver shapes the pool's receiver Deployment and Service, which serve every member
	// (each request is routed to its member by its write key).
	// +kubebuilder:default={}
	// +optional
	Receiver ReceiverSpec `json:"receiver,omitempty"`

	// Worker shapes the pool's worker Deployment.
	// +kubebuilder:default={}
	// +optional
	Worker PoolWorkerSpec `json:"worker,omitempty"`

	// AllowedNamespaces says which namespaces' SegmentSources may join.
	// +kubebuilder:default={from: Same}
	// +optional
	AllowedNamespaces AllowedNamespaces `json:"allowedNamespaces,omitempty"`
}

// SegmentSourcePoolStatus is what the operator observed.
type SegmentSourcePoolStatus struct {
	// ObservedGeneration is the generation the status describes; -1 until the first reconcile.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Members is the number of SegmentSources in the pool.
	// +optional
	Members int32 `json:"members"`

	// Endpoint is the in-cluster URL of the pool's receivers; every member's status shows it.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
}

// SegmentSourcePool runs one receiver and one worker Deployment for many SegmentSources, so a
// platform with thousands of small tenants does not run thousands of idle pods. Members join with
// spec.pool; each keeps its own stream, limits, dead letters and tenant login.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=segpool,categories=all;tally
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Members",type=integer,JSONPath=`.status.members`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`
// +kubebuilder:printcolumn:name="Status",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 54",message="name must be at most 54 characters (it prefixes the receiver's Service name)"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="name must be a DNS-1035 label: it names the receiver's Service"
type SegmentSourcePool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Spec SegmentSourcePoolSpec `json:"spec,omitempty"`

	// +kubebuilder:default={"observedGeneration":-1}
	Status SegmentSourcePoolStatus `json:"status,omitempty"`
}

// SegmentSourcePoolList is a list of SegmentSourcePools.
// +kubebuilder:object:root=true
type SegmentSourcePoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SegmentSourcePool `json:"items"`
}

// PoolRef names the SegmentSourcePool a SegmentSource joins.
type PoolRef struct {
	// Name of the SegmentSourcePool.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=54
	Name string `json:"name"`

	// Namespace of the pool; the source's own namespace when empty.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Namespace string `json:"namespace,omitempty"`
}

// PoolKey is the namespace and name of the pool a source joins, or ok=false when it joins none.
func (s *SegmentSource) PoolKey() (namespace, name string, ok bool) {
	p := s.Spec.Pool
	if p == nil {
		return "", "", false
	}
	if p.Namespace == "" {
		return s.Namespace, p.Name, true
	}
	return p.Namespace, p.Name, true
}

// FromOrDefault is allowedNamespaces.from with its default applied.
func (a *AllowedNamespaces) FromOrDefault() string {
	if a.From == "" {
		return NamespacesFromSame
	}
	return a.From
}
