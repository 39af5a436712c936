package trutoclient

import (
	"fmt"
	"unicode/utf8"
)

// Limits of the names an update carries. orgsync's producers refuse at enqueue
// exactly what UpdateOrganization would refuse at send, because both call the
// functions below.
const (
	MaxIDBytes  = 256 // an organization id or an integrated account id
	MaxKeyBytes = 255 // an idempotency key
)

// ValidateOrganizationID checks an organization id: 1..256 bytes of valid
// UTF-8 without control characters, and not "." or "..", which a server would
// resolve as a dot segment of the path. The error is a *RequestError for "id".
func ValidateOrganizationID(id string) error {
	if err := validateName("id", id); err != nil {
		return err
	}
	if id == "." || id == ".." {
		return &RequestError{Field: "id", Reason: fmt.Sprintf("%q cannot be sent as a path segment", id)}
	}
	return nil
}

// ValidateAccountID checks an integrated account id: 1..256 bytes of valid
// UTF-8 without control characters. The error is a *RequestError for
// "integrated_account_id".
func ValidateAccountID(id string) error { return validateName("integrated_account_id", id) }

// ValidateIdempotencyKey checks an idempotency key: 1..255 bytes of printable
// ASCII without leading or trailing spaces, so that it arrives as a header
// value exactly as sent. The error is a *RequestError for "idempotency_key".
func ValidateIdempotencyKey(k string) error {
	const field = "idempotency_key"
	switch {
	case k == "":
		return &RequestError{Field: field, Reason: "is empty"}
	case len(k) > MaxKeyBytes:
		return &RequestError{Field: field, Reason: fmt.Sprintf("is %d bytes; at most %d allowed", len(k), MaxKeyBytes)}
	case k[0] == ' ' || k[len(k)-1] == ' ':
		return &RequestError{Field: field, Reason: "has leading or trailing spaces, which a header value loses"}
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return &RequestError{Field: field, Reason: fmt.Sprintf("byte %d is not printable ASCII", i)}
		}
	}
	return nil
}

func validateName(field, v string) error {
	switch {
	case v == "":
		return &RequestError{Field: field, Reason: "is empty"}
	case len(v) > MaxIDBytes:
		return &RequestError{Field: field, Reason: fmt.Sprintf("is %d bytes; at most %d allowed", len(v), MaxIDBytes)}
	case !utf8.ValidString(v):
		return &RequestError{Field: field, Reason: "is not valid UTF-8"}
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return &RequestError{Field: field, Reason: fmt.Sprintf("contains control character %U", r)}
		}
	}
	return nil
}

// validateAll applies the shared rules for the request's names, then the
// request's own checks (body, options).
func (r *UpdateOrganizationRequest) validateAll() error {
	if r == nil {
		return r.validate()
	}
	if err := ValidateOrganizationID(r.ID); err != nil {
		return err
	}
	if err := ValidateAccountID(r.IntegratedAccountID); err != nil {
		return err
	}
	if r.IdempotencyKey != "" {
		if err := ValidateIdempotencyKey(r.IdempotencyKey); err != nil {
			return err
		}
	}
	return r.validate()
}
