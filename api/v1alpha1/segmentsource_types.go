package v1alpha1

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Condition types of a SegmentSource. Ready summarises; Reconciling and Stalled follow kstatus and are
// present only while true; Receiving turns true once the first message reached the stream.
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
	ConditionReceiving   = "Receiving"

	// Detail conditions Ready summarises; each is positive polarity (True is good).
	ConditionStreamReady       = "StreamReady"
	ConditionReceiverAvailable = "ReceiverAvailable"
	ConditionWorkerAvailable   = "WorkerAvailable"

	// ConditionInsightsDelivered says whether the latest insights push delivered every change
	// (spec.insights). Present only while spec.insights is set; not part of Ready, which is
	// about ingestion.
	ConditionInsightsDelivered = "InsightsDelivered"

	// ConditionNATSIsolated says whether the source's pods have NATS users of their own (True),
	// or share the manager's static credentials or use none, so that any tenant's pod could
	// publish into, read or delete another source's stream (False: a warning). Not part of Ready:
	// small installs run this way on purpose.
	ConditionNATSIsolated = "NATSIsolated"
)

// Stream deletion policies.
const (
	DeletionPolicyDelete = "Delete"
	DeletionPolicyRetain = "Retain"
)

// DefaultWriteKeyKey is the Secret key read when writeKeySecretRef.key is empty.
const DefaultWriteKeyKey = "writeKey"

// DefaultSharedSecretKey is the Secret key read when destination.sharedSecretRef.key is empty.
const DefaultSharedSecretKey = "sharedSecret"

// DestinationSpec configures Segment's deliveries to the receiver's `/v1/segment` route. They
// authenticate with the write key (Basic or Bearer, as custom headers of a Webhooks destination)
// or, with a shared secret, by Segment's X-Signature of the body.
type DestinationSpec struct {
	// SharedSecretRef names the Secret key holding the shared secret set on the Segment Webhooks
	// destination; several newline-separated secrets are all accepted, for a rotation.
	// +optional
	SharedSecretRef *SharedSecretRef `json:"sharedSecretRef,omitempty"`
}

// SharedSecretRef names the Secret key of a destination's shared secret(s). Its own type, because
// the key defaults to "sharedSecret".
type SharedSecretRef struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Key in the Secret's data.
	// +kubebuilder:default=sharedSecret
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// SharedSecretKey is the Secret key holding the shared secrets, with its default applied.
func (r *SharedSecretRef) SharedSecretKey() string {
	if r.Key == "" {
		return DefaultSharedSecretKey
	}
	return r.Key
}

// DefaultInsightsEndpoint is where insights go when spec.insights.endpoint is empty: Segment's
// Tracking API.
const DefaultInsightsEndpoint = "https://api.segment.io"

// DefaultInsightsInterval is the time between two insight pushes when spec.insights.interval is
// not set.
const DefaultInsightsInterval = time.Hour

// InsightsSpec pushes what Tally computes about the tenant's accounts and users back to a Segment
// source: per account a group call with tally_users, tally_active_users_7d/_30d,
// tally_events_7d/_30d and tally_last_seen_at; per user an identify call with tally_events_30d,
// tally_last_seen_at and tally_accounts. Only changed values are sent.
type InsightsSpec struct {
	// WriteKeySecretRef names the Secret key holding the write key of the Segment source that
	// receives the insights (one key). The Secret needs the label tally.dev/source-secret: "true".
	WriteKeySecretRef InsightsWriteKeyRef `json:"writeKeySecretRef"`

	// Endpoint is the Segment-compatible Tracking API the insights are sent to (its /v1/batch):
	// Segment's own by default, or e.g. a regional one or Tally's own receiver.
	// +kubebuilder:default="https://api.segment.io"
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^https?://[^\s/?#]+[^\s]*$`
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// Interval between two pushes; at least 5s.
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('5s')",message="interval must be at least 5s"
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`

	// Suspend stops the pushes; what was delivered is remembered, so resuming sends only what
	// changed meanwhile. A suspended insights spec needs no Secret.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// InsightsWriteKeyRef names the Secret key of the insights write key.
type InsightsWriteKeyRef struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Key in the Secret's data.
	// +kubebuilder:default=writeKey
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// WriteKeyKey is the Secret key holding the insights write key, with its default applied.
func (r *InsightsWriteKeyRef) WriteKeyKey() string {
	if r.Key == "" {
		return DefaultWriteKeyKey
	}
	return r.Key
}

// EndpointOrDefault is the insights endpoint with its default applied.
func (i *InsightsSpec) EndpointOrDefault() string {
	if i.Endpoint == "" {
		return DefaultInsightsEndpoint
	}
	return i.Endpoint
}

// IntervalOrDefault is the push interval with its default applied.
func (i *InsightsSpec) IntervalOrDefault() time.Duration {
	if i.Interval == nil || i.Interval.Duration <= 0 {
		return DefaultInsightsInterval
	}
	return i.Interval.Duration
}

// CatalogStatus is the short view of a tenant's event catalog.
type CatalogStatus struct {
	// Events is the number of distinct event names received.
	Events int64 `json:"events"`
	// Ignored is the number of names in ignoredEvents.
	Ignored int64 `json:"ignored"`
	// SeenLastDay is the number of names received in the last 24 hours.
	SeenLastDay int64 `json:"seenLastDay"`
}

// InsightsStatus is how the insight pushes went, read from the database.
type InsightsStatus struct {
	// LastPushAt is when the latest push that delivered every change ended.
	// +optional
	LastPushAt *metav1.Time `json:"lastPushAt,omitempty"`

	// LastAttemptAt is when the latest push ended, delivered or not.
	// +optional
	LastAttemptAt *metav1.Time `json:"lastAttemptAt,omitempty"`

	// EntitiesPushed is the number of accounts and users the latest complete push delivered
	// (0: nothing had changed).
	// +optional
	EntitiesPushed int64 `json:"entitiesPushed"`

	// LastError is why the latest push failed; empty when it succeeded.
	// +optional
	LastError string `json:"lastError,omitempty"`
}

// DefaultDatabaseURLKey is the Secret key read when worker.databaseSecretRef.key is empty.
const DefaultDatabaseURLKey = "url"

// SecretKeyRef names one key of a Secret in the SegmentSource's namespace.
type SecretKeyRef struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Key in the Secret's data. The value may hold several write keys, one per line, so that a key
	// can be rotated without refusing traffic.
	// +kubebuilder:default=writeKey
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// Autoscaling bounds for the receiver. When set, an HPA owns the receiver's replica count.
// +kubebuilder:validation:XValidation:rule="!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",message="minReplicas must not exceed maxReplicas"
type Autoscaling struct {
	// MinReplicas defaults to 1.
	// +kubebuilder:validation:Minimum=1
	// +optional
	MinReplicas int32 `json:"minReplicas,omitempty"`

	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	MaxReplicas int32 `json:"maxReplicas"`

	// Average CPU utilisation, in percent of requests, the HPA aims for; defaults to 70.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	TargetCPUUtilizationPercentage int32 `json:"targetCPUUtilizationPercentage,omitempty"`
}

// ReceiverSpec shapes the HTTP receiver Deployment and its Service.
type ReceiverSpec struct {
	// Replicas when autoscaling is not set.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=1
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Resources of the receiver container. When neither requests nor limits are set, the
	// operator's default applies (`tally manager --receiver-resources`); when set, they replace
	// that default as a whole.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// +optional
	Autoscaling *Autoscaling `json:"autoscaling,omitempty"`

	// ServiceType of the receiver's Service.
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +kubebuilder:default=ClusterIP
	// +optional
	ServiceType corev1.ServiceType `json:"serviceType,omitempty"`

	// Port the Service listens on.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:default=8080
	// +optional
	Port int32 `json:"port,omitempty"`

	// RateLimit bounds the events each receiver replica accepts for the source; past it the
	// source's senders get 429 with Retry-After (every Segment client and Segment itself retry
	// it) and nothing of the refused request is stored. On a SegmentSourcePool it is the limit of
	// every member that sets none of its own, so one member cannot take the pool's pods from the
	// others. Unset: no limit.
	// +optional
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
}

// RateLimit is a token bucket of events: it refills at EventsPerSecond and holds at most Burst.
// A request is admitted while the bucket is not empty and takes one token per accepted event,
// so a batch larger than what is left puts the bucket in debt instead of being refused forever.
type RateLimit struct {
	// EventsPerSecond is the sustained rate each receiver replica accepts.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000000
	EventsPerSecond int32 `json:"eventsPerSecond"`

	// Burst is how many events may arrive at once after a quiet spell; EventsPerSecond when unset.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000000
	// +optional
	Burst int32 `json:"burst,omitempty"`
}

// WorkerSpec shapes the worker Deployment that maps messages into Postgres.
type WorkerSpec struct {
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=1
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Resources of the worker container. When neither requests nor limits are set, the
	// operator's default applies (`tally manager --worker-resources`); when set, they replace
	// that default as a whole.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// BatchSize is the number of messages a worker fetches and commits in one transaction;
	// defaults to the worker's own default (2000, `tally worker --batch-size`).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	// +optional
	BatchSize int32 `json:"batchSize,omitempty"`

	// DatabaseSecretRef names a Secret in this namespace whose key holds the Postgres URL. When
	// empty, the operator copies the manager's database Secret into this namespace.
	// +optional
	DatabaseSecretRef *DatabaseSecretRef `json:"databaseSecretRef,omitempty"`
}

// DatabaseSecretRef names the Secret key holding a Postgres URL. It is its own type, not a
// SecretKeyRef, because the key defaults differently ("url", not "writeKey").
type DatabaseSecretRef struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Key in the Secret's data holding the URL.
	// +kubebuilder:default=url
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// StreamSpec shapes the JetStream stream that holds accepted messages until workers commit them.
type StreamSpec struct {
	// MaxAge, when set, opts into age-based trimming: JetStream deletes a message older than this
	// even if no worker has written it to Postgres yet, so an outage or a suspension longer than
	// MaxAge loses accepted events. Unset or 0 (the default; Go clients send "0s" for an unset
	// value) keeps every accepted message until a worker acknowledged it. At least a minute.
	// +kubebuilder:validation:XValidation:rule="duration(self) == duration('0s') || duration(self) >= duration('1m')",message="maxAge must be at least 1m (or 0: no age limit)"
	// +optional
	MaxAge metav1.Duration `json:"maxAge,omitempty"`

	// MaxBytes is the most the stream may hold (the manager's --stream-max-bytes, 1Gi, when
	// unset). A full stream refuses new messages, so this source's senders get 503 and retry
	// while every other source flows; its dead-letter stream gets a tenth of it (at least 16Mi).
	// +optional
	MaxBytes *resource.Quantity `json:"maxBytes,omitempty"`

	// Replicas of the stream (and its dead-letter stream) in a clustered NATS: 3 keeps every
	// acknowledged message through the loss of one NATS node, and the receivers answer 503 with
	// Retry-After only for the seconds of the leader election (a tested property: test/cluster).
	// More than 1 needs a JetStream cluster of at least that many servers; a NATS that is not
	// clustered refuses it and the source is Stalled. It may be changed on a live source:
	// JetStream adds or removes replicas and catches new ones up.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=5
	// +kubebuilder:default=1
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// Partitions splits the source's messages by user (userId, else anonymousId) into this many
	// subject partitions, each with a consumer of its own, so the workers apply one tenant's
	// messages several batches at a time. A power of two up to 64; 1 (the default) is the layout
	// of earlier versions. Changing it on a live source is safe: messages already stored are
	// still consumed where they are, and a user's messages never wait on another partition's.
	// +kubebuilder:validation:Enum=1;2;4;8;16;32;64
	// +kubebuilder:default=1
	// +optional
	Partitions int32 `json:"partitions,omitempty"`

	// DeletionPolicy says what happens to the stream when the SegmentSource is deleted. Delete
	// removes the streams once the workers consumed every message and no dead letter is left (the
	// SegmentSource stays, Ready=False with reason DeletionBlocked, until then); the annotation
	// tally.dev/force-delete: "true" deletes them at once, unprocessed messages included. Retain
	// keeps the streams.
	// +kubebuilder:validation:Enum=Delete;Retain
	// +kubebuilder:default=Delete
	// +optional
	DeletionPolicy string `json:"deletionPolicy,omitempty"`
}

// SegmentSourceSpec is one Segment integration of one tenant.
type SegmentSourceSpec struct {
	// Tenant is the Postgres tenant key every row of this source is written under. Immutable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="tenant is immutable"
	Tenant string `json:"tenant"`

	// WriteKeySecretRef names the Secret key that holds this source's write key(s).
	WriteKeySecretRef SecretKeyRef `json:"writeKeySecretRef"`

	// AccountProperty is the track property that names the account when context.groupId is absent.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z_$][A-Za-z0-9_$.-]*$`
	// +optional
	AccountProperty string `json:"accountProperty,omitempty"`

	// Destination configures the route Segment itself delivers to (`/v1/segment`, or
	// `/v1/segment/<namespace>/<name>` naming this source, which signed deliveries to a receiver
	// of many sources, such as a pool's, need), for a Segment source connected through Segment's
	// Webhooks destinations.
	// +optional
	Destination DestinationSpec `json:"destination,omitempty"`

	// IgnoredEvents are track event names dropped at the receiver and never stored.
	// +listType=set
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=200
	// +optional
	IgnoredEvents []string `json:"ignoredEvents,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Receiver ReceiverSpec `json:"receiver,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Worker WorkerSpec `json:"worker,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Stream StreamSpec `json:"stream,omitempty"`

	// Insights, when set, has the workers push account and user insights to a Segment source.
	// +optional
	Insights *InsightsSpec `json:"insights,omitempty"`

	// Suspend scales the receiver and workers to zero; stream and rows are kept.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// Pool, when set, has a SegmentSourcePool's receivers and workers serve this source instead
	// of Deployments of its own; the source keeps its stream, limits and dead letters.
	// +optional
	Pool *PoolRef `json:"pool,omitempty"`
}

// SegmentSourceStatus is what the operator observed.
type SegmentSourceStatus struct {
	// ObservedGeneration is the generation the status describes; -1 until the first reconcile.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Endpoint is the in-cluster URL Segment clients send to.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// Stream is the JetStream stream holding this source's messages.
	// +optional
	Stream string `json:"stream,omitempty"`

	// ConsumerPartitions is how many partition consumers the stream has when that is more than
	// spec.stream.partitions: the partition count was lowered, and the workers keep consuming the
	// higher partitions' consumers, which hold what was published to them before.
	// +optional
	ConsumerPartitions int32 `json:"consumerPartitions,omitempty"`

	// +optional
	FirstMessageAt *metav1.Time `json:"firstMessageAt,omitempty"`

	// +optional
	LastMessageAt *metav1.Time `json:"lastMessageAt,omitempty"`

	// Backlog is the number of messages accepted but not yet committed by a worker.
	// +optional
	Backlog int64 `json:"backlog,omitempty"`

	// UnnamedAccounts counts the tenant's accounts without a name: group calls for them carried
	// no name trait. Absent until the operator could read the tenant's rows.
	// +optional
	UnnamedAccounts *int64 `json:"unnamedAccounts,omitempty"`

	// Catalog summarises the event names the tenant received (`tally catalog --tenant` lists
	// them). Absent until the operator could read the tenant's rows.
	// +optional
	Catalog *CatalogStatus `json:"catalog,omitempty"`

	// Insights is how the insight pushes went; absent while spec.insights is not set.
	// +optional
	Insights *InsightsStatus `json:"insights,omitempty"`

	// Pool is the SegmentSourcePool (namespace/name) whose bucket holds this source's entry, so
	// the entry and the source's keys in the pool's Secrets are removed when it leaves.
	// +optional
	Pool string `json:"pool,omitempty"`

	// WriteKeySecretVersion is the resourceVersion of the write key Secret last rolled out.
	// +optional
	WriteKeySecretVersion string `json:"writeKeySecretVersion,omitempty"`
}

// SegmentSource turns one Segment integration into a receiver, workers and a JetStream stream.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=segsrc,categories=all;tally
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.tenant`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Receiving",type=string,JSONPath=`.status.conditions[?(@.type=="Receiving")].status`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`
// +kubebuilder:printcolumn:name="Status",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 54",message="name must be at most 54 characters (it prefixes the receiver's Service name)"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter): it names the receiver's Service"
type SegmentSource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec SegmentSourceSpec `json:"spec"`

	// +kubebuilder:default={"observedGeneration":-1}
	Status SegmentSourceStatus `json:"status,omitempty"`
}

// SegmentSourceList is a list of SegmentSources.
// +kubebuilder:object:root=true
type SegmentSourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SegmentSource `json:"items"`
}

// WriteKeyKey is the Secret key holding the write keys, with its default applied.
func (s *SegmentSource) WriteKeyKey() string {
	if s.Spec.WriteKeySecretRef.Key == "" {
		return DefaultWriteKeyKey
	}
	return s.Spec.WriteKeySecretRef.Key
}

// DatabaseURLKey is the Secret key holding the Postgres URL, with its default applied.
func (r *DatabaseSecretRef) DatabaseURLKey() string {
	if r.Key == "" {
		return DefaultDatabaseURLKey
	}
	return r.Key
}

// DeletionPolicy is what happens to the stream on deletion, with its default applied.
func (s *SegmentSource) DeletionPolicy() string {
	if s.Spec.Stream.DeletionPolicy == "" {
		return DeletionPolicyDelete
	}
	return s.Spec.Stream.DeletionPolicy
}

func metav1AddToGroupVersion(scheme *runtime.Scheme) { metav1.AddToGroupVersion(scheme, GroupVersion) }
