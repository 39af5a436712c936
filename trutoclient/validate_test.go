package trutoclient

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValidateNames(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", MaxIDBytes+1)
	tests := []struct {
		name     string
		validate func(string) error
		in       string
		want     *RequestError // nil: valid
	}{
		{"id plain", ValidateOrganizationID, "23423523", nil},
		{"id unicode", ValidateOrganizationID, "örg/1?x=y", nil},
		{"id at limit", ValidateOrganizationID, long[1:], nil},
		{"id empty", ValidateOrganizationID, "", &RequestError{Field: "id", Reason: "is empty"}},
		{"id dot", ValidateOrganizationID, ".", &RequestError{Field: "id", Reason: `"." cannot be sent as a path segment`}},
		{"id dotdot", ValidateOrganizationID, "..", &RequestError{Field: "id", Reason: `".." cannot be sent as a path segment`}},
		{"id too long", ValidateOrganizationID, long, &RequestError{Field: "id", Reason: "is 257 bytes; at most 256 allowed"}},
		{"id bad utf8", ValidateOrganizationID, "a\xffb", &RequestError{Field: "id", Reason: "is not valid UTF-8"}},
		{"id control", ValidateOrganizationID, "a\x00", &RequestError{Field: "id", Reason: "contains control character U+0000"}},
		{"id C1 control", ValidateOrganizationID, "a\u0085", &RequestError{Field: "id", Reason: "contains control character U+0085"}},
		{"account dots are data", ValidateAccountID, "..", nil},
		{"account empty", ValidateAccountID, "", &RequestError{Field: "integrated_account_id", Reason: "is empty"}},
		{"account DEL", ValidateAccountID, "a\x7f", &RequestError{Field: "integrated_account_id", Reason: "contains control character U+007F"}},
		{"account too long", ValidateAccountID, long, &RequestError{Field: "integrated_account_id", Reason: "is 257 bytes; at most 256 allowed"}},
		{"key plain", ValidateIdempotencyKey, "invoice-42", nil},
		{"key inner space", ValidateIdempotencyKey, "a b", nil},
		{"key empty", ValidateIdempotencyKey, "", &RequestError{Field: "idempotency_key", Reason: "is empty"}},
		{"key leading space", ValidateIdempotencyKey, " k", &RequestError{Field: "idempotency_key", Reason: "has leading or trailing spaces, which a header value loses"}},
		{"key trailing space", ValidateIdempotencyKey, "k ", &RequestError{Field: "idempotency_key", Reason: "has leading or trailing spaces, which a header value loses"}},
		{"key non-ASCII", ValidateIdempotencyKey, "kä", &RequestError{Field: "idempotency_key", Reason: "byte 1 is not printable ASCII"}},
		{"key tab", ValidateIdempotencyKey, "k\tk", &RequestError{Field: "idempotency_key", Reason: "byte 1 is not printable ASCII"}},
		{"key too long", ValidateIdempotencyKey, strings.Repeat("k", MaxKeyBytes+1), &RequestError{Field: "idempotency_key", Reason: "is 256 bytes; at most 255 allowed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.validate(tt.in)
			var got *RequestError
			if err != nil && !errors.As(err, &got) {
				t.Fatalf("error %v is not a *RequestError", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("validate(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// TestUpdateOrganizationUsesSharedRules: the client refuses, before any I/O,
// every name the shared rules refuse (main sent over-long ids, control
// characters and keys with surrounding spaces).
func TestUpdateOrganizationUsesSharedRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		edit  func(*UpdateOrganizationRequest)
		field string
	}{
		{"long id", func(r *UpdateOrganizationRequest) { r.ID = strings.Repeat("i", MaxIDBytes+1) }, "id"},
		{"control in id", func(r *UpdateOrganizationRequest) { r.ID = "a\tb" }, "id"},
		{"bad utf8 account", func(r *UpdateOrganizationRequest) { r.IntegratedAccountID = "\xfe" }, "integrated_account_id"},
		{"long account", func(r *UpdateOrganizationRequest) { r.IntegratedAccountID = strings.Repeat("a", MaxIDBytes+1) }, "integrated_account_id"},
		{"long key", func(r *UpdateOrganizationRequest) { r.IdempotencyKey = strings.Repeat("k", MaxKeyBytes+1) }, "idempotency_key"},
		{"spaced key", func(r *UpdateOrganizationRequest) { r.IdempotencyKey = "k " }, "idempotency_key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, answer(200, nil, `{}`))
			c := newTestClient(t, rec.srv.URL)
			req := validRequest()
			tt.edit(req)
			_, _, err := c.UpdateOrganization(testContext(t), req)
			var re *RequestError
			if !errors.As(err, &re) || re.Field != tt.field {
				t.Fatalf("error = %v, want *RequestError for %q", err, tt.field)
			}
			if n := len(rec.requests()); n != 0 {
				t.Errorf("server saw %d requests, want 0", n)
			}
		})
	}
}
