package v1alpha1

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Labels and values on a Tenant the operator created itself (manager --require-tenant=false): the
// namespace of the tenant's first SegmentSource claimed it, and the claim outlives that source.
const (
	LabelTenantClaim     = "tally.dev/claim"
	TenantClaimAutomatic = "first-source"
)

// TenantSpec says which namespaces may use a tenant.
type TenantSpec struct {
	// Namespaces whose SegmentSources may write this tenant's rows. A SegmentSource naming this
	// tenant in any other namespace is refused (Stalled, TenantNotAllowed) before the operator
	// creates anything for it.
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
}

// Tenant binds a tenant (the key of its rows in Postgres, a SegmentSource's spec.tenant) to the
// namespaces that may use it. Its name is the tenant. It is cluster-scoped and written by cluster
// administrators only, so a team that may create SegmentSources in its namespace cannot grant
// itself another team's tenant.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=tally
// +kubebuilder:printcolumn:name="Namespaces",type=string,JSONPath=`.spec.namespaces`
// +kubebuilder:printcolumn:name="Claim",type=string,JSONPath=`.metadata.labels.tally\.dev/claim`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="name must be at most 63 characters (it is a SegmentSource's spec.tenant)"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="name must be lower-case letters, digits and '-' (it is a SegmentSource's spec.tenant)"
type Tenant struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec TenantSpec `json:"spec,omitempty"`
}

// TenantList is a list of Tenants.
// +kubebuilder:object:root=true
type TenantList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Tenant `json:"items"`
}

// Allows reports whether SegmentSources in namespace may use the tenant.
func (t *Tenant) Allows(namespace string) bool {
	return slices.Contains(t.Spec.Namespaces, namespace)
}

// ClaimedAutomatically reports whether the operator created the Tenant for the namespace of the
// tenant's first SegmentSource (first-claim rule), as opposed to a cluster administrator.
func (t *Tenant) ClaimedAutomatically() bool {
	return t.Labels[LabelTenantClaim] == TenantClaimAutomatic
}
