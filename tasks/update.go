package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/orgsync/orgsync/trutoclient"
)

// Limits of an update, as DESIGN.md states them.
const (
	MaxIDBytes      = 256     // organization id and integrated account id
	MaxBodyBytes    = 1 << 20 // the JSON body
	MaxKeyBytes     = 255     // idempotency key
	maxErrorDisplay = 80      // bytes of an offending value quoted in an error
)

// Update is one intent: apply Body to organization ID of integrated account
// IntegratedAccountID, with Truto's query Options. Its JSON form is the NDJSON
// line format of `enqueue bulk` and the heart of the queue payload.
type Update struct {
	ID                  string              `json:"id"`
	IntegratedAccountID string              `json:"integrated_account_id"`
	Body                json.RawMessage     `json:"body"`
	Options             trutoclient.Options `json:"options,omitzero"`
	IdempotencyKey      string              `json:"idempotency_key,omitempty"`
}

// ValidationError says which field of an update is invalid and why.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Reason }

// Validate reports the first problem with u as a *ValidationError, or nil.
// An empty IdempotencyKey is valid: the producer generates one.
func (u *Update) Validate() error {
	if err := validateName("id", u.ID); err != nil {
		return err
	}
	if err := validateName("integrated_account_id", u.IntegratedAccountID); err != nil {
		return err
	}
	if err := validateBody(u.Body); err != nil {
		return err
	}
	if err := u.Options.Validate(); err != nil {
		return &ValidationError{Field: "options", Reason: err.Error()}
	}
	if u.IdempotencyKey != "" {
		if err := ValidateKey(u.IdempotencyKey); err != nil {
			return err
		}
	}
	return nil
}

func validateName(field, v string) error {
	switch {
	case v == "":
		return &ValidationError{Field: field, Reason: "is required"}
	case len(v) > MaxIDBytes:
		return &ValidationError{Field: field, Reason: fmt.Sprintf("is %d bytes; at most %d allowed", len(v), MaxIDBytes)}
	case !utf8.ValidString(v):
		return &ValidationError{Field: field, Reason: "is not valid UTF-8"}
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return &ValidationError{Field: field, Reason: fmt.Sprintf("contains control character %U", r)}
		}
	}
	return nil
}

func validateBody(b json.RawMessage) error {
	trimmed := bytes.TrimSpace(b)
	switch {
	case len(trimmed) == 0:
		return &ValidationError{Field: "body", Reason: "is required (a JSON object, e.g. {\"remote_data\": {...}})"}
	case len(b) > MaxBodyBytes:
		return &ValidationError{Field: "body", Reason: fmt.Sprintf("is %d bytes; at most %d allowed", len(b), MaxBodyBytes)}
	case trimmed[0] != '{':
		return &ValidationError{Field: "body", Reason: "must be a JSON object"}
	case !json.Valid(trimmed):
		return &ValidationError{Field: "body", Reason: "is not valid JSON"}
	}
	return nil
}

// ValidateKey checks an idempotency key: 1..255 bytes of printable ASCII.
func ValidateKey(k string) error {
	if k == "" {
		return &ValidationError{Field: "idempotency_key", Reason: "is empty"}
	}
	if len(k) > MaxKeyBytes {
		return &ValidationError{Field: "idempotency_key", Reason: fmt.Sprintf("is %d bytes; at most %d allowed", len(k), MaxKeyBytes)}
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return &ValidationError{Field: "idempotency_key", Reason: fmt.Sprintf("byte %d is not printable ASCII", i)}
		}
	}
	return nil
}

// ParseUpdate decodes one NDJSON line (or any JSON document) into a validated
// Update. Unknown fields are refused so that a typo ("integrated_acount_id")
// is an error rather than a silently missing value.
func ParseUpdate(line []byte) (Update, error) {
	var u Update
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		return Update{}, &ValidationError{Field: "line", Reason: "not a JSON update object: " + jsonReason(err)}
	}
	if dec.More() {
		return Update{}, &ValidationError{Field: "line", Reason: "has data after the JSON object"}
	}
	// Compact the body so the stored and sent bytes do not carry the line's
	// incidental whitespace; the meaning is unchanged.
	if len(u.Body) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, u.Body); err == nil {
			u.Body = buf.Bytes()
		}
	}
	if err := u.Validate(); err != nil {
		return Update{}, err
	}
	return u, nil
}

func jsonReason(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%s at byte %d", se.Error(), se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s, got %s", te.Field, te.Type, te.Value)
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
