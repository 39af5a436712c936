package trutoclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// maxTextLen caps APIError.ErrorText and APIError.Message; the whole body stays in Body.
const maxTextLen = 8 << 10

// maxErrorMessageLen caps the message part of APIError.Error, so log lines stay one line and short.
const maxErrorMessageLen = 256

// APIError is a non-2xx answer from Truto, with Truto's JSON error body parsed when there was one.
type APIError struct {
	// Method and Path name the request; Path is escaped, without the query.
	Method, Path string
	// StatusCode is the HTTP status.
	StatusCode int
	// ErrorText is Truto's "error", e.g. "Unprocessable Entity".
	ErrorText string
	// Message is Truto's "message", or raw_response rendered as text when the message is empty.
	Message string
	// IsRemoteError is truto_is_remote_error: the provider, not Truto, answered with the error.
	IsRemoteError bool
	// RawResponse is raw_response as sent: a JSON string or object.
	RawResponse json.RawMessage
	// ErrorInsight is truto_error_insight as sent.
	ErrorInsight json.RawMessage
	// IsTrutoBody reports that the body was Truto's JSON error shape (it has statusCode or error),
	// which tells a blocked account's 503 from a proxy's.
	IsTrutoBody bool
	// RetryAfter is Retry-After (seconds or HTTP-date), else ratelimit-reset; valid when HasRetryAfter.
	// A hint of no wait (0, a date not in the future) counts as absent.
	RetryAfter    time.Duration
	HasRetryAfter bool
	// Body is the size-limited raw body.
	Body []byte
	// Response is the whole answer.
	Response *Response
}

// Error names the method, path, status and a bounded, single-line message.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d", e.Method, e.Path, e.StatusCode)
	if text := http.StatusText(e.StatusCode); text != "" {
		b.WriteString(" " + text)
	} else if e.ErrorText != "" {
		b.WriteString(" " + oneLine(e.ErrorText, 64))
	}
	msg := e.Message
	if msg == "" && !e.IsTrutoBody && len(bytes.TrimSpace(e.Body)) > 0 {
		msg = "non-JSON body: " + string(e.Body)
	}
	if msg = oneLine(msg, maxErrorMessageLen); msg != "" {
		b.WriteString(": " + msg)
	}
	return b.String()
}

// RateLimitError is a 429 answer; RetryAfter is how long to wait (DefaultRateLimitDelay when the
// answer did not say, or said 0 or a past date; never less than MinRateLimitDelay).
type RateLimitError struct {
	// RetryAfter is how long the account must wait.
	RetryAfter time.Duration
	// Err is the 429 answer itself.
	Err *APIError
}

// Error describes the rate limit and the wait.
func (e *RateLimitError) Error() string {
	return fmt.Sprintf("rate limited, retry after %s: %v", e.RetryAfter, e.Err)
}

// Unwrap returns the underlying *APIError.
func (e *RateLimitError) Unwrap() error { return e.Err }

// TransportError is a failure below HTTP: the connection could not be made or broke, the request
// timed out or was canceled, or the answer's body could not be read. It names the request once
// and then the root cause, e.g.
//
//	PATCH /unified/user-directory/organizations/org-1: tls: failed to verify certificate: x509: certificate signed by unknown authority
//
// errors.Is and errors.As see the cause (context.DeadlineExceeded, *net.OpError,
// *tls.CertificateVerificationError, ...) through Unwrap.
type TransportError struct {
	// Method and Path name the request; Path is escaped, without the query (which names the
	// account), as in APIError.
	Method, Path string
	// StatusCode is the status of an answer whose body could not be read; 0 when no answer came.
	StatusCode int
	// Err is the cause, without the *url.Error around it (which repeats the whole URL).
	Err error
	// cause is Err's message with the token redacted, fixed when the client built the error.
	cause string
}

// newTransportError builds the error for a request that failed below HTTP, redacting the cause.
func newTransportError(method, path string, status int, err error, red *redactor) *TransportError {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		err = ue.Err
	}
	return &TransportError{Method: method, Path: path, StatusCode: status, Err: err, cause: red.String(err.Error())}
}

// Error names the method and path, the status when an answer had begun, and the cause.
func (e *TransportError) Error() string {
	s := e.Method + " " + e.Path + ": "
	if e.StatusCode != 0 {
		s += "reading the " + strconv.Itoa(e.StatusCode) + " response body: "
	}
	return s + e.Cause()
}

// Cause is the cause's message alone, with the token redacted, e.g. "dial tcp 10.0.0.1:443:
// connect: connection refused". It does not name the request, so it groups well.
func (e *TransportError) Cause() string {
	switch {
	case e.cause != "":
		return e.cause
	case e.Err != nil:
		return e.Err.Error()
	}
	return "unknown transport failure"
}

// Unwrap returns the cause.
func (e *TransportError) Unwrap() error { return e.Err }

// RequestError is an invalid request, refused before any I/O.
type RequestError struct {
	// Field names the invalid input, e.g. "id" or "remote_query[a]".
	Field string
	// Reason says what is wrong with it.
	Reason string
}

// Error names the field and what is wrong with it.
func (e *RequestError) Error() string { return "invalid " + e.Field + ": " + e.Reason }

// CheckResponse returns nil for a 2xx answer, else an *APIError (or *RateLimitError for 429) built
// from at most maxErrorBody bytes of the body. It reads but does not close r.Body. It knows no
// token, so it redacts nothing; UpdateOrganization's errors are redacted.
func CheckResponse(r *http.Response, maxErrorBody int64) error {
	if is2xx(r.StatusCode) {
		return nil
	}
	if maxErrorBody <= 0 {
		maxErrorBody = DefaultMaxErrorBody
	}
	resp := &Response{StatusCode: r.StatusCode, Header: filterHeader(r.Header), RateLimit: parseRateLimit(r.Header)}
	if r.Body != nil {
		resp.Body, resp.Truncated, _ = readBounded(r.Body, r.ContentLength, maxErrorBody)
	}
	method, path := "", ""
	if r.Request != nil {
		method = r.Request.Method
		if r.Request.URL != nil {
			path = r.Request.URL.EscapedPath()
		}
	}
	return newError(method, path, resp, time.Now(), nil)
}

// newError builds the typed error for a non-2xx Response whose body and headers red has already
// redacted. The fields decoded from the JSON body are redacted once more, in their decoded form.
// A nil red redacts nothing.
func newError(method, path string, resp *Response, now time.Time, red *redactor) error {
	eb := parseErrorBody(resp.Body)
	e := &APIError{
		Method:        method,
		Path:          path,
		StatusCode:    resp.StatusCode,
		ErrorText:     red.String(eb.ErrorText),
		Message:       red.String(eb.Message),
		IsRemoteError: eb.IsRemoteError,
		RawResponse:   red.Bytes(eb.RawResponse, false),
		ErrorInsight:  red.Bytes(eb.ErrorInsight, false),
		IsTrutoBody:   eb.IsTrutoBody,
		Body:          resp.Body,
		Response:      resp,
	}
	if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), now); ok {
		e.RetryAfter, e.HasRetryAfter = d, true
	} else if resp.RateLimit.HasReset {
		e.RetryAfter, e.HasRetryAfter = resp.RateLimit.Reset, true
	}
	if resp.StatusCode != http.StatusTooManyRequests {
		return e
	}
	return &RateLimitError{RetryAfter: rateLimitDelay(e.RetryAfter, e.HasRetryAfter, resp.RateLimit), Err: e}
}

// errorBody is what parseErrorBody finds in a body.
type errorBody struct {
	ErrorText     string
	Message       string
	IsRemoteError bool
	RawResponse   json.RawMessage
	ErrorInsight  json.RawMessage
	IsTrutoBody   bool
}

// parseErrorBody reads Truto's JSON error shape tolerantly: anything that is not a JSON object
// (HTML, text, empty) yields a zero errorBody, and fields of unexpected types are rendered as text.
func parseErrorBody(body []byte) errorBody {
	var eb errorBody
	if !isJSONObject(body) {
		return eb
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return eb
	}
	_, hasStatus := fields["statusCode"]
	_, hasError := fields["error"]
	eb.IsTrutoBody = hasStatus || hasError
	eb.ErrorText = jsonText(fields["error"])
	eb.Message = jsonText(fields["message"])
	_ = json.Unmarshal(fields["truto_is_remote_error"], &eb.IsRemoteError)
	eb.RawResponse = nonNull(fields["raw_response"])
	eb.ErrorInsight = nonNull(fields["truto_error_insight"])
	if strings.TrimSpace(eb.Message) == "" {
		eb.Message = jsonText(eb.RawResponse)
	}
	return eb
}

func nonNull(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return raw
}

// jsonText renders a JSON value as text: a string as its content, null as "", anything else compact.
func jsonText(raw json.RawMessage) string {
	raw = nonNull(raw)
	if raw == nil {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return truncate(s, maxTextLen)
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return ""
	}
	return truncate(buf.String(), maxTextLen)
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// oneLine collapses whitespace and control characters and bounds the length, for error strings.
func oneLine(s string, n int) string {
	s = truncate(s, 4*n)
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = truncate(s, n-len("...")) + "..."
	}
	return s
}

// statusText is a status code with its text, for reasons.
func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return strconv.Itoa(code) + " " + t
	}
	return strconv.Itoa(code)
}
