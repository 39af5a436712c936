package tasks

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDecodePayloadChecksBody: DecodePayload walks the body once, as part of
// the payload, and still refuses what Validate refuses in a body.
func TestDecodePayloadChecksBody(t *testing.T) {
	t.Parallel()
	const head = `{"v":2,"id":"1","integrated_account_id":"a","idempotency_key":"k","enqueued_at":"2026-01-02T03:04:05Z","body":`
	tests := []struct {
		name string
		body string
		want string // MalformedError reason
	}{
		{"key twice", `{"a":{"b":1,"b":2}}`, "body.a.b: appears twice in one object; give each field once"},
		{"invalid UTF-8", "{\"a\":\"\xc3\"}", "body.a: the value is not valid UTF-8"},
		{"lone surrogate", `{"a":["\udc00"]}`, `body.a[0]: the value has a \u escape of half a surrogate pair, which is not a character`},
		{"not an object", `[1]`, "body: must be a JSON object"},
		{"missing", `null`, "body: must be a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodePayload([]byte(head + tt.body + "}"))
			var me *MalformedError
			if !errors.As(err, &me) {
				t.Fatalf("DecodePayload error = %v, want a *MalformedError", err)
			}
			if diff := cmp.Diff(tt.want, me.Reason); diff != "" {
				t.Errorf("reason (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzDecodedPayloadValidates: every payload DecodePayload accepts passes
// the full Validate, though DecodePayload walks its body only once.
func FuzzDecodedPayloadValidates(f *testing.F) {
	for _, s := range []string{
		`{"v":2,"id":"1","integrated_account_id":"a","body":{"a":[1,{"b":"\ud83d\ude00"}]},"idempotency_key":"k","enqueued_at":"2026-01-02T03:04:05Z"}`,
		`{"v":1,"id":"1","integrated_account_id":"a","body":{ "a" : 1 },"idempotency_key":"k","enqueued_at":"2026-01-02T03:04:05Z","options":{"remote_query":{"n":1e400}}}`,
		`{"v":2,"id":"1","integrated_account_id":"a","body":{"a":1,"a":2},"idempotency_key":"k","enqueued_at":"2026-01-02T03:04:05Z"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodePayload(b)
		if err != nil {
			return
		}
		if err := p.Update.Validate(); err != nil {
			t.Fatalf("decoded payload fails Validate: %v", err)
		}
	})
}
