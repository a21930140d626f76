package segment

import "time"

// Segment's Tracking API limits. Sizes are of the JSON after any gzip decoding; a message's size
// is that of the message as it will be stored, with the batch's context and integrations merged
// in.
const (
	MaxMessageBytes  = 32 << 10
	MaxRequestBytes  = 500 << 10
	MaxBatchMessages = 2500
	// MaxRequestOutputBytes bounds what one request may expand to once the batch-level context
	// and integrations are merged into every message: four times the request limit is far above
	// what clients send (a few hundred bytes of batch context), and keeps a 500 KB request from
	// turning into 80 MB of messages.
	MaxRequestOutputBytes = 4 * MaxRequestBytes
	// Segment's Webhooks (Actions) destination batches up to 4,000 events per request, with no
	// byte limit of its own: the destination route takes them whole.
	MaxDestinationRequestBytes  = 16 << 20
	MaxDestinationBatchMessages = 4000
	// FutureTolerance is how far past its receipt an event may be dated; a later timestamp is
	// clamped to the receipt time (the client's value stays in originalTimestamp).
	FutureTolerance = 24 * time.Hour
)

// RequestLimit is the most bytes a request to the endpoint may hold after decompression.
func (ep Endpoint) RequestLimit() int {
	switch {
	case ep.Destination:
		return MaxDestinationRequestBytes
	case ep.Batch:
		return MaxRequestBytes
	}
	return MaxMessageBytes
}

// messageLimit is the most messages a request to the endpoint may hold.
func (ep Endpoint) messageLimit() int {
	if ep.Destination {
		return MaxDestinationBatchMessages
	}
	return MaxBatchMessages
}

// outputLimit is the most a request's messages may expand to once normalised: four times what
// the client routes take (their batch context is merged into every message), or twice the body
// on the destination route, where Segment sends messages whole.
func (ep Endpoint) outputLimit() int {
	if ep.Destination {
		return 2 * MaxDestinationRequestBytes
	}
	return MaxRequestOutputBytes
}

// Codes of request-level errors (the whole request is refused with 400).
const (
	CodeInvalidJSON      = "invalid_json"
	CodeInvalidBatch     = "invalid_batch"
	CodeMessageTooLarge  = "message_too_large"
	CodeRequestTooLarge  = "request_too_large"
	CodeTooManyMessages  = "too_many_messages"
	CodeInvalidWriteKey  = "invalid_write_key"
	CodeMessageNotObject = "message_not_object"
)

// Codes of per-message rejections. Where Segment's "failed on ingest" discard table has a code
// for the problem, it is that code.
const (
	CodeTypeRequired          = "type_required"
	CodeTypeInvalid           = "type_invalid"
	CodeTypeMismatch          = "type_mismatch"
	CodeIDRequired            = "id_required"
	CodeIDNotString           = "id_not_string"
	CodeEventNotDefined       = "event_not_defined"
	CodeEventNotString        = "event_not_string"
	CodeGroupIDRequired       = "group_id_required"
	CodeUserIDRequired        = "user_id_required"
	CodePreviousIDRequired    = "previous_id_required"
	CodeTraitsNotObject       = "traits_not_object"
	CodePropertiesNotObject   = "properties_not_object"
	CodeContextNotObject      = "context_not_object"
	CodeIntegrationsNotObject = "integrations_not_object"
	CodeNameNotString         = "name_not_string"
	CodeCategoryNotString     = "category_not_string"
	CodeMessageIDNotString    = "message_id_not_string"
	CodeMessageIDTooLong      = "message_id_too_long"
	CodeMessageIDInvalid      = "message_id_invalid"
	// CodeMessageTooLarge (above) is also a per-message rejection inside a batch.
	CodeInvalidUTF8      = "invalid_utf8"
	CodeUnstorableString = "unstorable_string"
	CodeNestingTooDeep   = "nesting_too_deep"
	CodeRequestExpansion = "request_expansion_too_large"
	CodeDeleteNotHere    = "delete_only_from_segment"
)

// RequestError refuses a whole request.
type RequestError struct {
	Code    string
	Message string
}

func (e *RequestError) Error() string { return e.Code + ": " + e.Message }

// Rejection is one message of a request that failed validation; the others are still accepted.
type Rejection struct {
	Index   int    `json:"index"`
	Code    string `json:"code"`
	Message string `json:"message"`
}
