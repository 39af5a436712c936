package tasks

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParseUpdate: any line either parses into an update that passes
// Validate and survives a JSON round trip, or fails with a ValidationError.
func FuzzParseUpdate(f *testing.F) {
	for _, s := range []string{
		`{"id":"1","integrated_account_id":"a","body":{"remote_data":{}}}`,
		`{"id":"1","integrated_account_id":"a","body":{},"options":{"truto_exclude_fields":["x"],"remote_query":{"a":{"b":1}}}}`,
		`{"id":"","integrated_account_id":"a","body":{}}`, `[]`, `null`, `{"id":1}`, `{"body":"{}"}`, "\xff", `{"id":"1"} x`,
		`{"id":"1","integrated_account_id":"a","body":{},"idempotency_key":"k\u0001"}`,
		`{"id":"1","ID":"2","integrated_account_id":"a","body":{"a":1,"a":2}}`,
		`{"id":"\ud800","integrated_account_id":"a","body":{"n":"\ud83d\ude00"}}`,
		`{"id":"1","integrated_account_id":"a","body":{},"options":{"remote_query":{"n":12345678901234567890}}}`,
		"{\"id\":\"a\xffb\",\"integrated_account_id\":\"a\",\"body\":{}}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		u, err := ParseUpdate(line)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v is not a ValidationError", err)
			}
			return
		}
		if err := u.Validate(); err != nil {
			t.Fatalf("parsed update fails Validate: %v", err)
		}
		b, err := json.Marshal(u)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		if _, err := ParseUpdate(b); err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
	})
}

// FuzzDecodePayload: any task payload decodes or is a MalformedError; never a panic.
func FuzzDecodePayload(f *testing.F) {
	good, _ := EncodePayload(Payload{Update: Update{ID: "1", IntegratedAccountID: "a", Body: json.RawMessage(`{}`), IdempotencyKey: "k"}})
	for _, s := range [][]byte{good, []byte(`{"v":2}`), []byte(`{}`), []byte(`{"v":1,"enqueued_at":"x"}`), nil} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := DecodePayload(b)
		var me *MalformedError
		if err != nil && !errors.As(err, &me) {
			t.Fatalf("error %v is not a MalformedError", err)
		}
	})
}
