package tasks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// TypeUpdateOrganization is the asynq task type of an organization update.
const TypeUpdateOrganization = "orgsync:update_organization"

// PayloadVersion is the version of the payload this code writes. Workers read
// every version up to this one; a newer one is dead-lettered with a reason that
// says to upgrade the worker.
//
// Version 2 made the idempotency key belong to its integrated account: the
// task id is TaskID(account, key) and the key sent to Truto is
// UpstreamKey(account, key). A version-1 payload keeps its old identity to the
// end, replays included: task id LegacyTaskID(key), and the caller's key sent
// as is, so every attempt of one update carries the same key.
const PayloadVersion = 2

// payloadV1 is the version before keys belonged to accounts.
const payloadV1 = 1

// Payload is what goes onto the queue: the update plus what the worker needs to
// bound it. It never holds a secret.
type Payload struct {
	Version int `json:"v"`
	Update
	// EnqueuedAt starts the update's wall-clock budget (--max-age).
	EnqueuedAt time.Time `json:"enqueued_at"`
	// MaxRetry is the update's retry budget; 0 means the worker's default.
	MaxRetry int `json:"max_retry,omitempty"`
	// Run names the bulk run that enqueued the update, if any.
	Run string `json:"run,omitempty"`
	// Replays counts how often an operator re-enqueued it from the dead letters.
	Replays int `json:"replays,omitempty"`
	// OrderSeq is the update's place in its organization's line (see order.go);
	// 0 for a payload written before ordering existed, which is not held back.
	OrderSeq int64 `json:"order_seq,omitempty"`
	// OriginSeq is the place the update first took in its organization's
	// line; a replay keeps it, so a replayed old update still counts as old
	// when deciding whether replaying another would overwrite newer data.
	OriginSeq int64 `json:"origin_seq,omitempty"`
}

// origin is the update's first place in its organization's line.
func (p Payload) origin() int64 {
	if p.OriginSeq > 0 {
		return p.OriginSeq
	}
	return p.OrderSeq
}

// MalformedError is why a task's payload cannot be processed; the handler
// dead-letters such tasks at once.
type MalformedError struct{ Reason string }

func (e *MalformedError) Error() string { return "malformed task payload: " + e.Reason }

// TaskID is the asynq task id of the payload's update.
func (p Payload) TaskID() string {
	if p.Version == payloadV1 {
		return LegacyTaskID(p.IdempotencyKey)
	}
	return TaskID(p.IntegratedAccountID, p.IdempotencyKey)
}

// UpstreamKey is the Idempotency-Key sent to Truto on every attempt of the
// payload's update.
func (p Payload) UpstreamKey() string {
	if p.Version == payloadV1 {
		return p.IdempotencyKey
	}
	return UpstreamKey(p.IntegratedAccountID, p.IdempotencyKey)
}

// EncodePayload renders p as the task payload, stamping the current version
// unless p.Version names an older one this code still writes (a replay of a
// version-1 dead letter keeps version 1, and with it its task id and key).
func EncodePayload(p Payload) ([]byte, error) {
	if p.Version < payloadV1 || p.Version > PayloadVersion {
		p.Version = PayloadVersion
	}
	return json.Marshal(p)
}

// DecodePayload parses and validates a task payload with the same strict
// decoder as ParseUpdate: a repeated or case-variant field, or invalid UTF-8,
// makes it malformed rather than silently meaning something else.
func DecodePayload(b []byte) (Payload, error) {
	var p Payload
	if err := decodeStrict(b, "payload", payloadShape, &p); err != nil {
		return Payload{}, &MalformedError{Reason: err.Error()}
	}
	switch {
	case p.Version < 1:
		return Payload{}, &MalformedError{Reason: "missing payload version"}
	case p.Version > PayloadVersion:
		return Payload{}, &MalformedError{Reason: fmt.Sprintf(
			"payload version %d is newer than this worker understands (%d): upgrade the worker, then replay", p.Version, PayloadVersion)}
	}
	// decodeStrict walked the body as part of the payload.
	if err := p.Update.validate(true); err != nil {
		return Payload{}, &MalformedError{Reason: err.Error()}
	}
	if p.IdempotencyKey == "" {
		return Payload{}, &MalformedError{Reason: "idempotency_key: is required on the queue"}
	}
	if p.EnqueuedAt.IsZero() {
		return Payload{}, &MalformedError{Reason: "enqueued_at: is required"}
	}
	if p.MaxRetry < 0 {
		return Payload{}, &MalformedError{Reason: "max_retry: must not be negative"}
	}
	return p, nil
}

// rawExcerpt bounds raw bytes kept in a record (a malformed payload, an error body).
func rawExcerpt(b []byte, n int) string {
	b = bytes.ToValidUTF8(b, []byte("\uFFFD"))
	if len(b) <= n {
		return string(b)
	}
	return string(bytes.ToValidUTF8(b[:n], nil)) + fmt.Sprintf("...[%d bytes truncated]", len(b)-n)
}
