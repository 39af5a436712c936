package trutoclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// slashToken has a slash, which JSON may escape as \/ and URLs as %2F.
const slashToken = "tk/S3cr3t-9f8e"

// uEscape writes every byte of s as a JSON \u escape, with hex digits in the given case.
func uEscape(s string, upper bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if upper {
			fmt.Fprintf(&b, `\u%04X`, s[i])
		} else {
			fmt.Fprintf(&b, `\u%04x`, s[i])
		}
	}
	return b.String()
}

// percentAll percent-encodes every byte of s.
func percentAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02x", s[i])
	}
	return b.String()
}

// tokenEncodings are ways an upstream may echo slashToken inside a JSON string.
var tokenEncodings = []struct{ name, inJSON string }{
	{"plain", slashToken},
	{"escaped slash", `tk\/S3cr3t-9f8e`},
	{"unicode escapes", uEscape(slashToken, false)},
	{"unicode escapes, upper-case hex", uEscape(slashToken, true)},
	{"some characters escaped", `\u0074k\/S3\u0063r3t-9f8\u0065`},
	{"percent-encoded slash", "tk%2FS3cr3t-9f8e"},
	{"percent-encoded, lower-case", percentAll(slashToken)},
	{"html references", "&#116;&#x6B;&sol;S3cr3t-9f8&#X65;"},
	{"hex escapes", `\\x74\\x6b/S3cr3t-9f8e`}, // \x74 once JSON is decoded
	{"json in json", `\\u0074k\\\/S3cr3t-9f8e`},
	{"percent in json", `\u0025` + "74k%2fS3cr3t-9f8e"},
	{"three layers", `\\u0025` + "74k%2FS3cr3t-9f8e"},
	{"bearer", "Bearer " + uEscape(slashToken, false)},
}

// revealed reports whether s shows slashToken, as it is or once decoded by the standard library
// (JSON, percent-encoding, HTML references, Go quoting), up to depth layers deep.
func revealed(s string, depth int) bool {
	if strings.Contains(s, slashToken) {
		return true
	}
	if depth == 0 {
		return false
	}
	var next []string
	var v any
	if json.Unmarshal([]byte(s), &v) == nil {
		next = append(next, jsonStrings(v)...)
	}
	var str string
	if json.Unmarshal([]byte(`"`+s+`"`), &str) == nil {
		next = append(next, str)
	}
	if u, err := strconv.Unquote(`"` + s + `"`); err == nil {
		next = append(next, u)
	}
	if u, err := url.PathUnescape(s); err == nil {
		next = append(next, u)
	}
	next = append(next, html.UnescapeString(s))
	for _, n := range next {
		if n != s && revealed(n, depth-1) {
			return true
		}
	}
	return false
}

func jsonStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, jsonStrings(e)...)
		}
		return out
	case map[string]any:
		var out []string
		for k, e := range v {
			out = append(append(out, k), jsonStrings(e)...)
		}
		return out
	}
	return nil
}

// TestEscapedTokenNeverShown: an upstream echoes the token, escaped in each way it might be, in
// an error message, in raw_response (the provider's JSON inside Truto's), in a header, in an HTML
// error page and in a success body. The token shows in no field of the error, no Error() string,
// no reason and no body that would be stored, even once those are decoded.
func TestEscapedTokenNeverShown(t *testing.T) {
	t.Parallel()
	for _, enc := range tokenEncodings {
		t.Run(enc.name, func(t *testing.T) {
			t.Parallel()
			if !revealed(`{"echo":"`+enc.inJSON+`"}`, maxDecodeDepth) {
				t.Fatalf("the check cannot see the token in %s: it would prove nothing", enc.inJSON)
			}
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Request-Id", enc.inJSON)
				w.Header().Set("Ratelimit-Limit", enc.inJSON)
				switch r.URL.Query().Get("integrated_account_id") {
				case "ok":
					w.WriteHeader(200)
					fmt.Fprintf(w, `{"id":"x","name":"%s","remote_data":{"echo":"%s"}}`, enc.inJSON, enc.inJSON)
				case "html":
					w.WriteHeader(502)
					fmt.Fprintf(w, `<html><body>upstream said %s</body></html>`, enc.inJSON)
				default:
					w.WriteHeader(422)
					fmt.Fprintf(w, `{"statusCode":422,"error":"%s","message":"invalid token %s","truto_is_remote_error":true,`+
						`"raw_response":"{\"message\":\"%s\"}","truto_error_insight":{"echo":"%s"}}`,
						enc.inJSON, enc.inJSON, strings.ReplaceAll(enc.inJSON, `\`, `\\`), enc.inJSON)
				}
			})
			c, err := New(slashToken, WithBaseURL(rec.srv.URL))
			if err != nil {
				t.Fatal(err)
			}
			for _, account := range []string{"ok", "html", "refused"} {
				req := validRequest()
				req.IntegratedAccountID = account
				org, resp, err := c.UpdateOrganization(testContext(t), req)
				if resp == nil {
					t.Fatalf("%s: no response (error %v)", account, err)
				}
				shown := map[string]string{
					"body": string(resp.Body), "reason": Classify(resp, err).Reason,
					"headers": fmt.Sprint(resp.Header), "ratelimit-limit": resp.RateLimit.Limit,
				}
				if org != nil {
					shown["organization"] = fmt.Sprintf("%+v", *org) + string(org.RemoteData)
				}
				if err != nil {
					shown["Error()"] = err.Error()
				}
				var apiErr *APIError
				if errors.As(err, &apiErr) {
					shown["APIError.Error()"] = apiErr.Error()
					shown["error"], shown["message"] = apiErr.ErrorText, apiErr.Message
					shown["raw_response"], shown["insight"] = string(apiErr.RawResponse), string(apiErr.ErrorInsight)
					shown["APIError.Body"] = string(apiErr.Body)
				}
				for field, s := range shown {
					if revealed(s, maxDecodeDepth) {
						t.Errorf("%s: the token shows in %s: %s", account, field, s)
					}
				}
				if !strings.Contains(string(resp.Body), redactedText) {
					t.Errorf("%s: body %s does not say it was redacted", account, resp.Body)
				}
			}
		})
	}
}

// TestRedactor pins what is hidden and what is left alone.
func TestRedactor(t *testing.T) {
	t.Parallel()
	red := newRedactor(slashToken)
	tests := []struct {
		name, in  string
		truncated bool
		want      string
	}{
		{"nothing", `{"id":"x"}`, false, `{"id":"x"}`},
		{"plain", `a tk/S3cr3t-9f8e b`, false, `a [redacted] b`},
		{"twice", `tk/S3cr3t-9f8etk/S3cr3t-9f8e`, false, `[redacted][redacted]`},
		{"escaped slash", `"tk\/S3cr3t-9f8e"`, false, `"[redacted]"`},
		{"unicode", `"` + uEscape(slashToken, true) + `"`, false, `"[redacted]"`},
		{"percent", `q=tk%2fS3cr3t-9f8e&x=1`, false, `q=[redacted]&x=1`},
		{"html", `&#116;k&#x2F;S3cr3t-9f8e`, false, `[redacted]`},
		{"escaped escape", `\\u0074k/S3cr3t-9f8e`, false, `[redacted]`},
		{"upper-cased is not the token", `TK/S3CR3T-9F8E`, false, `TK/S3CR3T-9F8E`},
		{"one letter changed is not the token", `tk/S3cr3T-9f8e`, false, `tk/S3cr3T-9f8e`},
		{"broken escape left alone", `\u00zz %zz &#xzz; tk/S3cr3t`, false, `\u00zz %zz &#xzz; tk/S3cr3t`},
		{"cut off at the end of a truncated body", `{"echo":"tk/S3cr`, true, `{"echo":"[redacted]`},
		{"cut off, escaped", `{"echo":"tk\/S3`, true, `{"echo":"[redacted]`},
		{"too short a start is left", `{"echo":"tk/`, true, `{"echo":"tk/`},
		{"a start is left when not truncated", `{"echo":"tk/S3cr`, false, `{"echo":"tk/S3cr`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, string(red.Bytes([]byte(tt.in), tt.truncated))); diff != "" {
				t.Errorf("Bytes(%q) (-want +got):\n%s", tt.in, diff)
			}
			if !tt.truncated {
				if diff := cmp.Diff(tt.want, red.String(tt.in)); diff != "" {
					t.Errorf("String(%q) (-want +got):\n%s", tt.in, diff)
				}
			}
		})
	}
}

// TestRedactorTokenWithEscapes: a token that itself holds escape-like text is found as it is and
// escaped, though decoding changes it.
func TestRedactorTokenWithEscapes(t *testing.T) {
	t.Parallel()
	red := newRedactor(`a%41&amp;\u0062`)
	tests := []struct{ name, in string }{
		{"plain", `a%41&amp;\u0062`},
		{"json-escaped", `a%41&amp;\\u0062`},
		{"percent-encoded", `a%2541%26amp;%5Cu0062`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff("<[redacted]>", red.String("<"+tt.in+">")); diff != "" {
				t.Errorf("String (-want +got):\n%s", diff)
			}
		})
	}
}
