package controllers

import (
	"errors"
	"fmt"
	"time"
)

// ErrNoPoolLogin is TenantDatabaseRoles.GrantPoolMember's answer before the pool's login exists.
var ErrNoPoolLogin = errors.New("the pool's Postgres login does not exist yet")

// Reasons of the Ready condition (and of Reconciling/Stalled, which mirror it). Each names what a
// person has to look at; the message says exactly which object or server.
const (
	ReasonSucceeded           = "Succeeded"
	ReasonSuspended           = "Suspended"
	ReasonProgressing         = "Progressing"
	ReasonProgressingRetry    = "ProgressingWithRetry"
	ReasonSecretNotFound      = "SecretNotFound"
	ReasonSecretKeyNotFound   = "SecretKeyNotFound"
	ReasonNoDatabaseSecret    = "DatabaseSecretNotConfigured"
	ReasonNATSUnavailable     = "NATSUnavailable"
	ReasonStreamRejected      = "StreamConfigRejected"
	ReasonResourceConflict    = "ResourceConflict"
	ReasonStreamNotFound      = "StreamNotFound"
	ReasonStreamReady         = "StreamReady"
	ReasonStreamNearlyFull    = "StreamNearlyFull"
	ReasonSecretNotLabelled   = "SecretNotLabelled"
	ReasonStreamOfOtherTenant = "StreamOfOtherTenant"
	ReasonAvailable           = "Available"
	ReasonUnavailable         = "Unavailable"
	ReasonRollingOut          = "RollingOut"
	ReasonScaledToZero        = "ScaledToZero"
	ReasonFirstMessage        = "MessagesArrived"
	ReasonNoMessages          = "NoMessagesYet"
	ReasonDeletionFailed      = "DeletionFailed"
	ReasonDeletionBlocked     = "DeletionBlocked"
	ReasonTenantClaimed       = "TenantClaimed"
	ReasonTenantNotAllowed    = "TenantNotAllowed"
	ReasonReconcileError      = "ReconcileError"
	ReasonDatabaseRoleFailed  = "DatabaseRoleFailed"
	eventReasonStreamDeleted  = "StreamDeleted"
	eventReasonStreamRetained = "StreamRetained"
)

// errorKind sorts failures into kstatus' three outcomes.
type errorKind int

const (
	// kindTransient: something that usually heals by itself (an API conflict, NATS unreachable).
	// Ready=False, and the error is returned so the workqueue retries with exponential backoff.
	kindTransient errorKind = iota
	// kindWaiting: a dependency the user has to provide (a Secret, a key). Ready=False, no error;
	// the Secret watch wakes us when it appears, and a slow requeue covers anything unwatched.
	kindWaiting
	// kindStalled: input a retry can never fix (JetStream refuses the stream configuration, no
	// database configured at all). Stalled=True, no retry until the spec changes.
	kindStalled
)

// reconcileError carries a Ready reason and a message a person can act on.
type reconcileError struct {
	kind         errorKind
	reason       string
	message      string
	requeueAfter time.Duration
	err          error
}

func (e *reconcileError) Error() string {
	if e.err != nil && e.message == "" {
		return e.err.Error()
	}
	return e.message
}

func (e *reconcileError) Unwrap() error { return e.err }

func waiting(reason string, after time.Duration, format string, args ...any) error {
	return &reconcileError{kind: kindWaiting, reason: reason, requeueAfter: after, message: fmt.Sprintf(format, args...)}
}

func transient(reason string, err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if err != nil {
		msg += ": " + err.Error()
	}
	return &reconcileError{kind: kindTransient, reason: reason, err: err, message: msg}
}

func stalled(reason string, format string, args ...any) error {
	return &reconcileError{kind: kindStalled, reason: reason, message: fmt.Sprintf(format, args...)}
}

// asReconcileError classifies any error; an unclassified one is transient.
func asReconcileError(err error) *reconcileError {
	var re *reconcileError
	if errors.As(err, &re) {
		return re
	}
	return &reconcileError{kind: kindTransient, reason: ReasonReconcileError, err: err, message: err.Error()}
}
