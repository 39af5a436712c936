package tasks

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orgsync/orgsync/trutoclient"
)

const lineHead = `{"id":"1","integrated_account_id":"a",`

// TestParseUpdateRefusesAmbiguousInput: what encoding/json alone accepts with
// another meaning than the text's is refused, naming the field.
func TestParseUpdateRefusesAmbiguousInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		line string
		want *ValidationError
	}{
		{"account twice in two cases", `{"id":"1","integrated_account_id":"a","INTEGRATED_ACCOUNT_ID":"b","body":{}}`,
			&ValidationError{Field: "INTEGRATED_ACCOUNT_ID", Reason: `is not a field: names are case-sensitive; did you mean "integrated_account_id"?`}},
		{"case variant alone", `{"ID":"1","integrated_account_id":"a","body":{}}`,
			&ValidationError{Field: "ID", Reason: `is not a field: names are case-sensitive; did you mean "id"?`}},
		{"field twice", `{"id":"1","id":"2","integrated_account_id":"a","body":{}}`,
			&ValidationError{Field: "id", Reason: "appears twice in one object; give each field once"}},
		{"field twice, once escaped", `{"id":"1","\u0069d":"2","integrated_account_id":"a","body":{}}`,
			&ValidationError{Field: "id", Reason: "appears twice in one object; give each field once"}},
		{"option twice", lineHead + `"body":{},"options":{"truto_response_format":"raw","truto_response_format":"unified"}}`,
			&ValidationError{Field: "options.truto_response_format", Reason: "appears twice in one object; give each field once"}},
		{"option case variant", lineHead + `"body":{},"options":{"Truto_Response_Format":"raw"}}`,
			&ValidationError{Field: "options.Truto_Response_Format", Reason: `is not a field: names are case-sensitive; did you mean "truto_response_format"?`}},
		{"body key twice, nested", lineHead + `"body":{"remote_data":{"tier":"gold","tier":"free"}}}`,
			&ValidationError{Field: "body.remote_data.tier", Reason: "appears twice in one object; give each field once"}},
		{"remote_query key twice", lineHead + `"body":{},"options":{"remote_query":{"a":{"b":1,"b":2}}}}`,
			&ValidationError{Field: "options.remote_query.a.b", Reason: "appears twice in one object; give each field once"}},
		{"invalid UTF-8 in id", "{\"id\":\"a\xffb\",\"integrated_account_id\":\"a\",\"body\":{}}",
			&ValidationError{Field: "id", Reason: "the value is not valid UTF-8"}},
		{"invalid UTF-8 in body", lineHead + "\"body\":{\"name\":\"\xc3\x28\"}}",
			&ValidationError{Field: "body.name", Reason: "the value is not valid UTF-8"}},
		{"invalid UTF-8 in a body key", lineHead + "\"body\":{\"n\xe9\":1}}",
			&ValidationError{Field: "body", Reason: "a key is not valid UTF-8"}},
		{"invalid UTF-8 in an array", lineHead + "\"body\":{\"l\":[\"ok\",\"\xff\"]}}",
			&ValidationError{Field: "body.l[1]", Reason: "the value is not valid UTF-8"}},
		{"lone surrogate in id", `{"id":"\ud800","integrated_account_id":"a","body":{}}`,
			&ValidationError{Field: "id", Reason: `the value has a \u escape of half a surrogate pair, which is not a character`}},
		{"lone low surrogate in body", lineHead + `"body":{"n":"x\udc00"}}`,
			&ValidationError{Field: "body.n", Reason: `the value has a \u escape of half a surrogate pair, which is not a character`}},
		{"unknown field", lineHead + `"body":{},"priority":1}`,
			&ValidationError{Field: "priority", Reason: "is not a field; the fields here are body, id, idempotency_key, integrated_account_id, options"}},
		{"data after", lineHead + `"body":{}} {}`, &ValidationError{Field: "line", Reason: "has data after the JSON value"}},
		{"dot id", `{"id":"..","integrated_account_id":"a","body":{}}`, &ValidationError{Field: "id", Reason: `".." cannot be sent as a path segment`}},
		{"spaced key", lineHead + `"body":{},"idempotency_key":" k"}`,
			&ValidationError{Field: "idempotency_key", Reason: "has leading or trailing spaces, which a header value loses"}},
		{"reserved account", `{"id":"1","integrated_account_id":"*","body":{}}`,
			&ValidationError{Field: "integrated_account_id", Reason: `"*" is reserved (it names all accounts in ` + "`enqueue accounts resume`)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseUpdate([]byte(tt.line))
			var got *ValidationError
			if !errors.As(err, &got) {
				t.Fatalf("ParseUpdate error = %v, want a *ValidationError", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseUpdate(%q) (-want +got):\n%s", tt.line, diff)
			}
		})
	}
}

// TestParseUpdateAccepts: strictness does not refuse what is plainly meant.
func TestParseUpdateAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		line     string
		wantBody string
	}{
		{"replacement character written out", lineHead + `"body":{"n":"\ufffd �"}}`, `{"n":"\ufffd �"}`},
		{"surrogate pair", lineHead + `"body":{"n":"\ud83d\ude00"}}`, `{"n":"\ud83d\ude00"}`},
		{"keys differing in case are data", lineHead + `"body":{"Name":1,"name":2}}`, `{"Name":1,"name":2}`},
		{"same key in sibling objects", lineHead + `"body":{"a":{"x":1},"b":{"x":1}}}`, `{"a":{"x":1},"b":{"x":1}}`},
		{"other escapes", lineHead + `"body":{"n":"a\\u0000\"\/"}}`, `{"n":"a\\u0000\"\/"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u, err := ParseUpdate([]byte(tt.line))
			if err != nil {
				t.Fatalf("ParseUpdate(%q): %v", tt.line, err)
			}
			if diff := cmp.Diff(tt.wantBody, string(u.Body)); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNumbersStayExact: a remote_query number goes out with every digit, from
// the line through the queue payload to the query string.
func TestNumbersStayExact(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"12345678901234567890", "remote_query%5Bn%5D=12345678901234567890"},
		{"-0.10000000000000000555", "remote_query%5Bn%5D=-0.10000000000000000555"},
		{"1e3", "remote_query%5Bn%5D=1000"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			u, err := ParseUpdate([]byte(lineHead + `"body":{},"idempotency_key":"k","options":{"remote_query":{"n":` + tt.in + `}}}`))
			if err != nil {
				t.Fatal(err)
			}
			b, err := EncodePayload(Payload{Update: u, EnqueuedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
			if err != nil {
				t.Fatal(err)
			}
			p, err := DecodePayload(b)
			if err != nil {
				t.Fatal(err)
			}
			q, err := trutoclient.EncodeQuery(p.IntegratedAccountID, p.Options)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.TrimPrefix(q, "integrated_account_id=a&")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("query (-want +got):\n%s", diff)
			}
		})
	}
}

// TestValidateFromGo: an Update built in Go gets the same checks on its raw
// body and option strings as a parsed line, and the client's rules on names.
func TestValidateFromGo(t *testing.T) {
	t.Parallel()
	base := func() Update { return Update{ID: "1", IntegratedAccountID: "a", Body: json.RawMessage(`{}`)} }
	tests := []struct {
		name string
		edit func(*Update)
		want *ValidationError
	}{
		{"body key twice", func(u *Update) { u.Body = json.RawMessage(`{"a":1,"a":2}`) },
			&ValidationError{Field: "body.a", Reason: "appears twice in one object; give each field once"}},
		{"body invalid UTF-8", func(u *Update) { u.Body = json.RawMessage("{\"a\":\"\xff\"}") },
			&ValidationError{Field: "body.a", Reason: "the value is not valid UTF-8"}},
		{"body not JSON", func(u *Update) { u.Body = json.RawMessage(`{"a":}`) },
			&ValidationError{Field: "body", Reason: "is not valid JSON: invalid character '}' looking for beginning of value at byte 5"}},
		{"body padded with Unicode spaces", func(u *Update) { u.Body = json.RawMessage("\u00a0{}\u0085") },
			&ValidationError{Field: "body", Reason: "must be a JSON object"}},
		{"body padded with JSON whitespace", func(u *Update) { u.Body = json.RawMessage(" \t{}\r\n") }, nil},
		{"remote_query invalid UTF-8", func(u *Update) { u.Options.RemoteQuery = map[string]any{"k": "\xff"} },
			&ValidationError{Field: "options.remote_query.k", Reason: "is not valid UTF-8"}},
		{"exclude field invalid UTF-8", func(u *Update) { u.Options.ExcludeFields = []string{"ok", "\xff"} },
			&ValidationError{Field: "options.truto_exclude_fields[1]", Reason: "is not valid UTF-8"}},
		{"dot id", func(u *Update) { u.ID = "." }, &ValidationError{Field: "id", Reason: `"." cannot be sent as a path segment`}},
		{"key trailing space", func(u *Update) { u.IdempotencyKey = "k " },
			&ValidationError{Field: "idempotency_key", Reason: "has leading or trailing spaces, which a header value loses"}},
		{"reserved account", func(u *Update) { u.IntegratedAccountID = AllAccounts },
			&ValidationError{Field: "integrated_account_id", Reason: `"*" is reserved (it names all accounts in ` + "`enqueue accounts resume`)"}},
		{"valid", func(*Update) {}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := base()
			tt.edit(&u)
			var got *ValidationError
			if err := u.Validate(); err != nil && !errors.As(err, &got) {
				t.Fatalf("Validate error %v is not a *ValidationError", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDoorMatchesClient: for every name, the door refuses exactly what the
// client refuses (orgsync's reserved account names aside, which the door alone knows).
func TestDoorMatchesClient(t *testing.T) {
	t.Parallel()
	names := []string{"", "1", ".", "..", "...", " ", " k", "k ", "a b", "a\tb", "\x00", "a\xff", "ö", "a\u0085",
		strings.Repeat("x", 255), strings.Repeat("x", 256), strings.Repeat("x", 257), "u_0123456789abcdef0123456789abcdef"}
	for _, n := range names {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			u := Update{ID: n, IntegratedAccountID: "a", Body: json.RawMessage(`{}`)}
			if door, client := u.Validate() != nil, trutoclient.ValidateOrganizationID(n) != nil; door != client {
				t.Errorf("id %q: door refuses %v, client refuses %v", n, door, client)
			}
			u = Update{ID: "1", IntegratedAccountID: n, Body: json.RawMessage(`{}`)}
			if door, client := u.Validate() != nil, trutoclient.ValidateAccountID(n) != nil; door != client {
				t.Errorf("account %q: door refuses %v, client refuses %v", n, door, client)
			}
			if n == "" {
				return // no key: the producer generates one
			}
			u = Update{ID: "1", IntegratedAccountID: "a", Body: json.RawMessage(`{}`), IdempotencyKey: n}
			if door, client := u.Validate() != nil, trutoclient.ValidateIdempotencyKey(n) != nil; door != client {
				t.Errorf("key %q: door refuses %v, client refuses %v", n, door, client)
			}
		})
	}
}

// TestDecodePayloadStrict: the payload decoder is the same strict decoder, so
// a tampered or hand-written task cannot mean two things either.
func TestDecodePayloadStrict(t *testing.T) {
	t.Parallel()
	const rest = `"id":"1","integrated_account_id":"a","body":{},"idempotency_key":"k","enqueued_at":"2026-01-02T03:04:05Z"}`
	tests := []struct {
		name    string
		payload string
		want    string // MalformedError reason
	}{
		{"version twice", `{"v":1,"v":99,` + rest, "v: appears twice in one object; give each field once"},
		{"account in two cases", `{"v":1,"Integrated_Account_ID":"*",` + rest,
			`Integrated_Account_ID: is not a field: names are case-sensitive; did you mean "integrated_account_id"?`},
		{"invalid UTF-8 in id", "{\"v\":1,\"id\":\"\xff\"," + strings.TrimPrefix(rest, `"id":"1",`), "id: the value is not valid UTF-8"},
		{"reserved account", `{"v":1,"id":"1","integrated_account_id":"*","body":{},"idempotency_key":"k","enqueued_at":"2026-01-02T03:04:05Z"}`,
			`integrated_account_id: "*" is reserved (it names all accounts in ` + "`enqueue accounts resume`)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodePayload([]byte(tt.payload))
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
