// Package v1alpha1 holds the SegmentSource and Tenant API of group tally.dev.
// +kubebuilder:object:generate=true
// +groupName=tally.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of SegmentSource.
	GroupVersion = schema.GroupVersion{Group: "tally.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion, &SegmentSource{}, &SegmentSourceList{}, &Tenant{}, &TenantList{},
		&SegmentSourcePool{}, &SegmentSourcePoolList{})
	metav1AddToGroupVersion(scheme)
	return nil
}
