package trutoclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultBaseURL is Truto's public API endpoint.
const DefaultBaseURL = "https://api.truto.one"

// DefaultTimeout bounds one attempt, from sending the request to reading the whole body.
const DefaultTimeout = 30 * time.Second

// DefaultMaxErrorBody is how many bytes of a non-2xx body are kept.
const DefaultMaxErrorBody = 64 << 10

// DefaultMaxResponseBody is how many bytes of a 2xx body are kept: as much as orgsync stores as an
// update's result. A longer body is cut to it and flagged Response.Truncated.
const DefaultMaxResponseBody = 1 << 20

// DefaultMaxConnsPerHost is the idle-connection pool size per host of the default transport.
const DefaultMaxConnsPerHost = 256

// maxBodyLimit is the largest body limit the options accept (1 GiB): each in-flight call may hold
// that much.
const maxBodyLimit = 1 << 30

// discardLimit bounds how much of an unread body is drained so the connection can be reused;
// beyond it, closing the connection is cheaper than reading on.
const discardLimit = 256 << 10

// h2StreamWindow is the HTTP/2 receive window per stream of the default transport: how much of a
// body the transport may hold before the client reads it. Go's default is 4 MiB, which would
// dominate the memory a body may take; bodies kept are at most 1 MiB by default.
const h2StreamWindow = 256 << 10

// Version is orgsync's version, set at build time with -ldflags; it goes into the default User-Agent.
var Version = "dev"

// secret holds the API token. It is only ever reached through a pointer, so that printing a Client
// shows an address, and its own methods redact it in case it is printed directly.
type secret struct{ v string }

func (*secret) String() string                 { return "[redacted]" }
func (*secret) GoString() string               { return `"[redacted]"` }
func (*secret) Format(f fmt.State, _ rune)     { _, _ = io.WriteString(f, "[redacted]") }
func (s *secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// Client sends Update Organization calls to Truto. It is safe for concurrent use.
type Client struct {
	token           *secret
	redactor        *redactor // hides the token in everything that comes back
	baseURL         *url.URL
	httpClient      *http.Client
	userAgent       string
	timeout         time.Duration
	maxConnsPerHost int
	maxErrorBody    int64
	maxResponseBody int64
	now             func() time.Time // injected in tests: Retry-After HTTP-dates depend on it
}

// Option configures a Client in New.
type Option func(*Client) error

// New returns a Client that authenticates with token. Options are applied in order.
func New(token string, opts ...Option) (*Client, error) {
	if token == "" {
		return nil, errors.New("truto client: the API token is empty: set TRUTO_API_TOKEN or TRUTO_API_TOKEN_FILE")
	}
	for _, r := range token {
		if r <= ' ' || r == 0x7f {
			return nil, errors.New("truto client: the API token contains whitespace or control characters " +
				"(a trailing newline from a token file?): remove them")
		}
	}
	base, err := parseBaseURL(DefaultBaseURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		token:           &secret{v: token},
		redactor:        newRedactor(token),
		baseURL:         base,
		userAgent:       "orgsync/" + Version + " (+https://github.com/orgsync/orgsync)",
		timeout:         DefaultTimeout,
		maxConnsPerHost: DefaultMaxConnsPerHost,
		maxErrorBody:    DefaultMaxErrorBody,
		maxResponseBody: DefaultMaxResponseBody,
		now:             time.Now,
	}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(c); err != nil {
			return nil, fmt.Errorf("truto client: %w", err)
		}
	}
	if c.httpClient == nil {
		c.httpClient = &http.Client{
			Transport: NewTransport(c.maxConnsPerHost),
			// A redirect would turn the PATCH into a GET (301/302) or carry the token elsewhere;
			// a 3xx is returned to the caller instead, who treats it as permanent.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c, nil
}

// String describes the client without its token.
func (c Client) String() string {
	base := ""
	if c.baseURL != nil {
		base = c.baseURL.Redacted()
	}
	return fmt.Sprintf("trutoclient.Client{baseURL: %q, userAgent: %q, timeout: %s, token: [redacted]}",
		base, c.userAgent, c.timeout)
}

// GoString is String, so that %#v does not reveal the token either.
func (c Client) GoString() string { return c.String() }

func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the input, which may hold credentials: report only the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("base URL is not a valid URL (%v): set an absolute URL such as %s (TRUTO_BASE_URL)", err, DefaultBaseURL)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("base URL %q: the scheme must be http or https, as in %s (TRUTO_BASE_URL)", u.Redacted(), DefaultBaseURL)
	case u.Host == "":
		return nil, fmt.Errorf("base URL %q has no host: use a form such as %s (TRUTO_BASE_URL)", u.Redacted(), DefaultBaseURL)
	case u.User != nil:
		return nil, fmt.Errorf("base URL %q carries user credentials: remove them; the API token is sent as a header", u.Redacted())
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("base URL %q has a query or fragment: remove it", u.Redacted())
	}
	return u, nil
}

// WithBaseURL sets Truto's base URL, e.g. for a self-hosted deployment. A path prefix is kept:
// https://h/prefix sends to https://h/prefix/unified/....
func WithBaseURL(u string) Option {
	return func(c *Client) error {
		base, err := parseBaseURL(u)
		if err != nil {
			return err
		}
		c.baseURL = base
		return nil
	}
}

// WithHTTPClient sets the HTTP client; WithMaxConnsPerHost then has no effect.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return errors.New("WithHTTPClient: the HTTP client is nil")
		}
		c.httpClient = hc
		return nil
	}
}

// WithUserAgent replaces the default User-Agent header.
func WithUserAgent(ua string) Option {
	return func(c *Client) error {
		if ua == "" || !isHeaderValue(ua) {
			return fmt.Errorf("WithUserAgent: %q is not a usable header value: use printable ASCII", ua)
		}
		c.userAgent = ua
		return nil
	}
}

// WithTimeout bounds each attempt (request and body read); 0 disables the per-attempt bound.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) error {
		if d < 0 {
			return fmt.Errorf("WithTimeout: %s is negative: use a positive duration, or 0 for none", d)
		}
		c.timeout = d
		return nil
	}
}

// WithMaxConnsPerHost sizes the default transport's idle pool per host (default 256).
func WithMaxConnsPerHost(n int) Option {
	return func(c *Client) error {
		if n <= 0 {
			return fmt.Errorf("WithMaxConnsPerHost: %d: use a positive number", n)
		}
		c.maxConnsPerHost = n
		return nil
	}
}

// WithMaxErrorBody sets how many bytes of a non-2xx body are kept.
func WithMaxErrorBody(n int64) Option {
	return func(c *Client) error {
		if n <= 0 || n > maxBodyLimit {
			return fmt.Errorf("WithMaxErrorBody: %d: use a positive number of bytes, at most %d", n, int64(maxBodyLimit))
		}
		c.maxErrorBody = n
		return nil
	}
}

// WithMaxResponseBody sets how many bytes of a 2xx body are kept (default DefaultMaxResponseBody).
// It bounds the memory of a call: a longer body is cut to n bytes and flagged Response.Truncated.
func WithMaxResponseBody(n int64) Option {
	return func(c *Client) error {
		if n <= 0 || n > maxBodyLimit {
			return fmt.Errorf("WithMaxResponseBody: %d: use a positive number of bytes, at most %d", n, int64(maxBodyLimit))
		}
		c.maxResponseBody = n
		return nil
	}
}

// NewTransport returns a transport tuned for many concurrent requests to one host.
func NewTransport(maxConnsPerHost int) *http.Transport {
	if maxConnsPerHost <= 0 {
		maxConnsPerHost = DefaultMaxConnsPerHost
	}
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ForceAttemptHTTP2 = true
	t.MaxIdleConns = max(t.MaxIdleConns, maxConnsPerHost)
	t.MaxIdleConnsPerHost = maxConnsPerHost
	t.IdleConnTimeout = 90 * time.Second
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ExpectContinueTimeout = 1 * time.Second
	// The per-attempt context timeout covers waiting for headers; a second, shorter bound here
	// would only turn slow successes into "maybe applied".
	t.ResponseHeaderTimeout = 0
	t.MaxResponseHeaderBytes = 1 << 20
	t.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: h2StreamWindow}
	return t
}

// UpdateOrganizationRequest is one Update Organization call.
type UpdateOrganizationRequest struct {
	// ID is the organization's id in the remote system; it is path-escaped.
	ID string
	// IntegratedAccountID names the connected account to act on.
	IntegratedAccountID string
	// Body is a JSON object, sent byte for byte.
	Body json.RawMessage
	// Options are Truto's query options.
	Options Options
	// IdempotencyKey is sent as Idempotency-Key when non-empty, identical on every attempt.
	IdempotencyKey string
}

const orgsPath = "/unified/user-directory/organizations/"

func (r *UpdateOrganizationRequest) validate() error {
	if r == nil {
		return &RequestError{Field: "request", Reason: "is nil"}
	}
	switch r.ID {
	case "":
		return &RequestError{Field: "id", Reason: "is empty"}
	case ".", "..":
		// Escaping leaves dots alone and servers resolve dot segments, which would change the path.
		return &RequestError{Field: "id", Reason: fmt.Sprintf("%q cannot be sent as a path segment", r.ID)}
	}
	if r.IntegratedAccountID == "" {
		return &RequestError{Field: "integrated_account_id", Reason: "is empty"}
	}
	if !isJSONObject(r.Body) {
		return &RequestError{Field: "body", Reason: "is not a JSON object"}
	}
	if r.IdempotencyKey != "" && !isHeaderValue(r.IdempotencyKey) {
		return &RequestError{Field: "idempotency_key", Reason: "must be printable ASCII without leading or trailing spaces"}
	}
	return r.Options.Validate()
}

// UpdateOrganization sends one PATCH: exactly one attempt, no retries; the caller owns retrying.
//
// A 2xx returns the decoded organization when the response format is "", unified or normalized
// and the body is an organization object (nil otherwise, without error). A 2xx body longer than
// the response limit is not an error either: the update was applied, the Response keeps the
// body's start and says Truncated, and the organization is nil. A non-2xx returns the Response and
// an *APIError or *RateLimitError. A transport failure returns a *TransportError that keeps
// context.DeadlineExceeded and net errors matchable, with a partial Response when headers
// arrived. An invalid request returns a *RequestError before any I/O. Nothing returned holds the
// token, in any encoding the redaction recognizes.
func (c *Client) UpdateOrganization(ctx context.Context, req *UpdateOrganizationRequest) (*Organization, *Response, error) {
	if err := req.validateAll(); err != nil {
		return nil, nil, err
	}
	query, err := EncodeQuery(req.IntegratedAccountID, req.Options)
	if err != nil {
		return nil, nil, err
	}
	path := strings.TrimSuffix(c.baseURL.EscapedPath(), "/") + orgsPath + url.PathEscape(req.ID)
	target := c.baseURL.Scheme + "://" + c.baseURL.Host + path + "?" + query

	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPatch, target, bytes.NewReader(req.Body))
	if err != nil {
		return nil, nil, &RequestError{Field: "id", Reason: "does not form a valid URL: " + err.Error()}
	}
	hreq.Header.Set("Authorization", "Bearer "+c.token.v)
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")
	hreq.Header.Set("User-Agent", c.userAgent)
	if req.IdempotencyKey != "" {
		hreq.Header.Set("Idempotency-Key", req.IdempotencyKey)
	}

	start := time.Now()
	hresp, err := c.httpClient.Do(hreq)
	if err != nil {
		return nil, nil, newTransportError(http.MethodPatch, path, 0, err, c.redactor)
	}
	resp, readErr := readResponse(hresp, c.maxErrorBody, c.maxResponseBody)
	resp.Latency = time.Since(start)
	c.redactResponse(resp)
	if readErr != nil {
		return nil, resp, newTransportError(http.MethodPatch, path, resp.StatusCode, readErr, c.redactor)
	}
	if !is2xx(resp.StatusCode) {
		return nil, resp, newError(http.MethodPatch, path, resp, c.now(), c.redactor)
	}
	if resp.Truncated {
		return nil, resp, nil
	}
	return decodeOrganization(req.Options.ResponseFormat, resp.Body), resp, nil
}

// redactResponse hides the token in a response that echoes it, in any encoding the redactor
// sees through (a debugging proxy, a provider quoting the request, a misbehaving fake), before
// the body is parsed, returned or stored: responses end up in stored results, dead letters,
// attempt histories and logs. The error built from the response is redacted again after its
// JSON is decoded (newError).
func (c *Client) redactResponse(resp *Response) {
	resp.Body = c.redactor.Bytes(resp.Body, resp.Truncated)
	for _, vs := range resp.Header {
		for i, v := range vs {
			vs[i] = c.redactor.String(v)
		}
	}
	resp.RateLimit.Limit = c.redactor.String(resp.RateLimit.Limit)
}

func decodeOrganization(format string, body []byte) *Organization {
	switch format {
	case "", "unified", "normalized":
	default:
		return nil // raw and stream bodies are the provider's own bytes
	}
	if !isJSONObject(body) {
		return nil
	}
	var org Organization
	if err := json.Unmarshal(body, &org); err != nil {
		return nil
	}
	return &org
}

func is2xx(code int) bool { return code >= 200 && code <= 299 }

func isJSONObject(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && json.Valid(b)
}

// isHeaderValue accepts printable ASCII without surrounding spaces, so the value arrives as sent.
func isHeaderValue(s string) bool {
	if s == "" || s[0] == ' ' || s[len(s)-1] == ' ' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
