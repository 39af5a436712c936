package trutoclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNewRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		token   string
		opts    []Option
		wantSub string
	}{
		{"empty token", "", nil, "set TRUTO_API_TOKEN"},
		{"token with newline", "abc\n", nil, "trailing newline"},
		{"relative base", "t", []Option{WithBaseURL("api.truto.one")}, "scheme must be http or https"},
		{"ftp base", "t", []Option{WithBaseURL("ftp://h")}, "scheme must be http or https"},
		{"no host", "t", []Option{WithBaseURL("https://")}, "no host"},
		{"bad escape", "t", []Option{WithBaseURL("https://h/%zz")}, "not a valid URL"},
		{"userinfo", "t", []Option{WithBaseURL("https://u:pw@h")}, "user credentials"},
		{"query", "t", []Option{WithBaseURL("https://h?x=1")}, "query or fragment"},
		{"nil http client", "t", []Option{WithHTTPClient(nil)}, "nil"},
		{"bad user agent", "t", []Option{WithUserAgent("a\r\nb")}, "WithUserAgent"},
		{"negative timeout", "t", []Option{WithTimeout(-time.Second)}, "negative"},
		{"zero conns", "t", []Option{WithMaxConnsPerHost(0)}, "positive"},
		{"zero error body", "t", []Option{WithMaxErrorBody(0)}, "positive"},
		{"zero response body", "t", []Option{WithMaxResponseBody(-1)}, "positive"},
		{"huge response body", "t", []Option{WithMaxResponseBody(1 << 40)}, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.token, tt.opts...)
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("New() error = %v, want one containing %q", err, tt.wantSub)
			}
			if strings.Contains(err.Error(), "pw") {
				t.Errorf("error %q repeats the URL's password", err)
			}
		})
	}
}

func TestRequestPath(t *testing.T) {
	t.Parallel()
	const orgs = "/unified/user-directory/organizations/"
	tests := []struct {
		name, base, id, wantPath string
	}{
		{"plain", "", "org-1", orgs + "org-1"},
		{"dot segments", "", "a/../../admin", orgs + "a%2F..%2F..%2Fadmin"},
		{"query in id", "", "x?y=1", orgs + "x%3Fy=1"},
		{"fragment in id", "", "x#y", orgs + "x%23y"},
		{"space", "", "sp ace", orgs + "sp%20ace"},
		{"non-ascii", "", "ü", orgs + "%C3%BC"},
		{"escaped slash", "", "%2F", orgs + "%252F"},
		{"prefix", "/prefix", "org-1", "/prefix" + orgs + "org-1"},
		{"prefix with slash", "/prefix/", "org-1", "/prefix" + orgs + "org-1"},
		{"escaped prefix", "/p%20x/v1", "a/b", "/p%20x/v1" + orgs + "a%2Fb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, answer(200, nil, `{"id":"x"}`))
			c := newTestClient(t, rec.srv.URL+tt.base)
			req := validRequest()
			req.ID = tt.id
			if _, _, err := c.UpdateOrganization(testContext(t), req); err != nil {
				t.Fatalf("UpdateOrganization: %v", err)
			}
			got := rec.requests()[0]
			want := recorded{Method: http.MethodPatch, RequestURI: tt.wantPath + "?integrated_account_id=acc-1",
				Path: tt.wantPath, RawQuery: "integrated_account_id=acc-1"}
			got.Header, got.Body = nil, nil
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("request (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRequestQuery(t *testing.T) {
	t.Parallel()
	rec := newRecorder(t, answer(200, nil, `{"id":"x"}`))
	c := newTestClient(t, rec.srv.URL)
	req := validRequest()
	req.IntegratedAccountID = "acc 1&x=y"
	req.Options = Options{ResponseFormat: "raw", IgnoreRemoteData: true, ExcludeFields: []string{"b", "a"},
		RemoteQuery: map[string]any{"z": "1", "a": map[string]any{"b": true}}}
	if _, _, err := c.UpdateOrganization(testContext(t), req); err != nil {
		t.Fatalf("UpdateOrganization: %v", err)
	}
	want := "integrated_account_id=acc+1%26x%3Dy&remote_query%5Ba%5D%5Bb%5D=true&remote_query%5Bz%5D=1" +
		"&truto_exclude_fields%5B%5D=b&truto_exclude_fields%5B%5D=a&truto_ignore_remote_data=true&truto_response_format=raw"
	if got := rec.requests()[0].RawQuery; got != want {
		t.Errorf("raw query:\n got %s\nwant %s", got, want)
	}
}

func TestRequestHeadersAndBody(t *testing.T) {
	t.Parallel()
	const body = "{ \"remote_data\" : {\"tier\":\"gold\",\"n\":1.50,\"s\":\"\\u00fc\"}\n}"
	tests := []struct {
		name    string
		opts    []Option
		key     string
		wantUA  string
		wantKey []string // nil: the header is absent
	}{
		{"defaults, no key", nil, "", "orgsync/dev (+https://github.com/orgsync/orgsync)", nil},
		{"key", nil, "run1:abc-123", "orgsync/dev (+https://github.com/orgsync/orgsync)", []string{"run1:abc-123"}},
		{"custom agent", []Option{WithUserAgent("custom/1.0")}, "k", "custom/1.0", []string{"k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, answer(200, nil, `{"id":"x"}`))
			c := newTestClient(t, rec.srv.URL, tt.opts...)
			req := validRequest()
			req.Body = json.RawMessage(body)
			req.IdempotencyKey = tt.key
			if _, _, err := c.UpdateOrganization(testContext(t), req); err != nil {
				t.Fatalf("UpdateOrganization: %v", err)
			}
			got := rec.requests()[0]
			h := got.Header
			gotHeaders := map[string][]string{
				"Authorization":   h.Values("Authorization"),
				"Content-Type":    h.Values("Content-Type"),
				"Accept":          h.Values("Accept"),
				"User-Agent":      h.Values("User-Agent"),
				"Idempotency-Key": h.Values("Idempotency-Key"),
			}
			wantHeaders := map[string][]string{
				"Authorization":   {"Bearer " + testToken},
				"Content-Type":    {"application/json"},
				"Accept":          {"application/json"},
				"User-Agent":      {tt.wantUA},
				"Idempotency-Key": tt.wantKey,
			}
			if diff := cmp.Diff(wantHeaders, gotHeaders); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			if string(got.Body) != body {
				t.Errorf("body = %q, want %q byte for byte", got.Body, body)
			}
		})
	}
}

// TestRetryShape plays the caller's retry loop: the same request object sent three times must put
// the same key and body on the wire each time.
func TestRetryShape(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1:
			answer(503, map[string]string{"Content-Type": "text/html"}, "<html>down</html>")(w, r)
		case 2:
			answer(502, nil, `{"statusCode":502,"error":"Bad Gateway","message":"upstream lost"}`)(w, r)
		default:
			answer(200, nil, `{"id":"org-1","name":"Acme"}`)(w, r)
		}
	})
	c := newTestClient(t, rec.srv.URL)
	req := validRequest()
	req.IdempotencyKey = "update-42"
	var classes []string
	for range 3 {
		_, resp, err := c.UpdateOrganization(testContext(t), req)
		classes = append(classes, Classify(resp, err).Class.String())
	}
	if diff := cmp.Diff([]string{"transient", "possibly_applied", "success"}, classes); diff != "" {
		t.Errorf("classes (-want +got):\n%s", diff)
	}
	reqs := rec.requests()
	if len(reqs) != 3 {
		t.Fatalf("server saw %d requests, want 3", len(reqs))
	}
	for i, r := range reqs {
		if got := r.Header.Values("Idempotency-Key"); !cmp.Equal(got, []string{"update-42"}) {
			t.Errorf("attempt %d: Idempotency-Key = %q, want [update-42]", i+1, got)
		}
		if string(r.Body) != string(reqs[0].Body) || r.RequestURI != reqs[0].RequestURI {
			t.Errorf("attempt %d differs from attempt 1: %q %q vs %q %q", i+1, r.RequestURI, r.Body, reqs[0].RequestURI, reqs[0].Body)
		}
	}
}

func TestInvalidRequestSendsNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		edit      func(*UpdateOrganizationRequest) *UpdateOrganizationRequest
		wantField string
	}{
		{"nil", func(*UpdateOrganizationRequest) *UpdateOrganizationRequest { return nil }, "request"},
		{"empty id", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.ID = ""; return r }, "id"},
		{"dot id", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.ID = "."; return r }, "id"},
		{"dotdot id", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.ID = ".."; return r }, "id"},
		{"empty account", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.IntegratedAccountID = ""; return r }, "integrated_account_id"},
		{"empty body", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.Body = nil; return r }, "body"},
		{"array body", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.Body = []byte(`[1]`); return r }, "body"},
		{"broken body", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.Body = []byte(`{"a":`); return r }, "body"},
		{"key with newline", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest { r.IdempotencyKey = "a\nb"; return r }, "idempotency_key"},
		{"bad format", func(r *UpdateOrganizationRequest) *UpdateOrganizationRequest {
			r.Options.ResponseFormat = "xml"
			return r
		}, "truto_response_format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, answer(200, nil, `{}`))
			c := newTestClient(t, rec.srv.URL)
			org, resp, err := c.UpdateOrganization(testContext(t), tt.edit(validRequest()))
			var re *RequestError
			if !errors.As(err, &re) || re.Field != tt.wantField {
				t.Fatalf("error = %v, want *RequestError for field %q", err, tt.wantField)
			}
			if org != nil || resp != nil {
				t.Errorf("got org %v, resp %v; want nil, nil", org, resp)
			}
			if n := len(rec.requests()); n != 0 {
				t.Errorf("server saw %d requests, want 0", n)
			}
			if d := Classify(resp, err); d.Class != ClassPermanent || !strings.HasPrefix(d.Reason, "invalid request: ") {
				t.Errorf("Classify = %+v, want permanent invalid request", d)
			}
		})
	}
}

func TestSuccessDecoding(t *testing.T) {
	t.Parallel()
	const orgJSON = `{"id":"org-1","name":"Acme","pricing_plan":"pro","licenses":[{"id":"l1","name":"Seat"}],` +
		`"created_at":"2024-01-02T03:04:05Z","remote_data":{"tier":"gold"}}`
	acme := &Organization{ID: "org-1", Name: "Acme", PricingPlan: "pro", Licenses: []License{{ID: "l1", Name: "Seat"}},
		CreatedAt: "2024-01-02T03:04:05Z", RemoteData: json.RawMessage(`{"tier":"gold"}`)}
	tests := []struct {
		name, format, body string
		want               *Organization
	}{
		{"default format", "", orgJSON, acme},
		{"unified", "unified", orgJSON, acme},
		{"normalized", "normalized", orgJSON, acme},
		{"raw keeps bytes only", "raw", orgJSON, nil},
		{"stream keeps bytes only", "stream", "binary\x00data", nil},
		{"not an object", "", `[1,2]`, nil},
		{"not json", "", `<html>`, nil},
		{"empty", "", ``, nil},
		{"wrong types", "", `{"id":5}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, answer(200, map[string]string{"X-Request-Id": "r1", "Set-Cookie": "a=b"}, tt.body))
			c := newTestClient(t, rec.srv.URL)
			req := validRequest()
			req.Options.ResponseFormat = tt.format
			org, resp, err := c.UpdateOrganization(testContext(t), req)
			if err != nil {
				t.Fatalf("UpdateOrganization: %v", err)
			}
			if diff := cmp.Diff(tt.want, org); diff != "" {
				t.Errorf("organization (-want +got):\n%s", diff)
			}
			if string(resp.Body) != tt.body || resp.StatusCode != 200 {
				t.Errorf("response = %d %q, want 200 %q", resp.StatusCode, resp.Body, tt.body)
			}
			if resp.Header.Get("X-Request-Id") != "r1" || resp.Header.Get("Set-Cookie") != "" {
				t.Errorf("headers = %v, want X-Request-Id kept and Set-Cookie dropped", resp.Header)
			}
		})
	}
}

func TestResponseHeaders(t *testing.T) {
	t.Parallel()
	rec := newRecorder(t, answer(200, map[string]string{
		"Retry-After": "3", "Ratelimit-Limit": "110;w=10", "Ratelimit-Remaining": "0", "Ratelimit-Reset": "7",
		"Content-Type": "application/json", "X-Request-Id": "a", "X-Truto-Request-Id": "b", "Cf-Ray": "c",
		"Fly-Request-Id": "d", "Server": "nginx", "X-Other": "e",
	}, `{"id":"x"}`))
	c := newTestClient(t, rec.srv.URL)
	_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
	if err != nil {
		t.Fatalf("UpdateOrganization: %v", err)
	}
	want := http.Header{
		"Retry-After": {"3"}, "Ratelimit-Limit": {"110;w=10"}, "Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"7"},
		"Content-Type": {"application/json"}, "X-Request-Id": {"a"}, "X-Truto-Request-Id": {"b"}, "Cf-Ray": {"c"},
		"Fly-Request-Id": {"d"},
	}
	if diff := cmp.Diff(want, resp.Header); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	wantRL := RateLimit{Limit: "110;w=10", Remaining: 0, HasRemaining: true, Reset: 7 * time.Second, HasReset: true}
	if diff := cmp.Diff(wantRL, resp.RateLimit); diff != "" {
		t.Errorf("rate limit (-want +got):\n%s", diff)
	}
	if d := Classify(resp, err); d.Class != ClassSuccess || d.Delay != 7*time.Second {
		t.Errorf("Classify = %+v, want success with a 7s delay", d)
	}
}

// TestResponseLimits: a body longer than its limit is cut to the limit and flagged, whether or not
// the upstream announced its length; a 2xx so cut is still a success.
func TestResponseLimits(t *testing.T) {
	t.Parallel()
	const limit = 50
	org := `{"id":"x","name":"` + strings.Repeat("a", 100) + `"}`
	exact := `{"id":"x","name":"` + strings.Repeat("a", limit-len(`{"id":"x","name":""}`)) + `"}`
	tests := []struct {
		name          string
		status        int
		body          string
		chunked       bool
		wantBody      string
		wantTruncated bool
		wantOrg       bool
		wantReason    string
	}{
		{"200 longer", 200, org, false, org[:limit], true, false, "200 OK (response body truncated)"},
		{"200 longer, chunked", 200, org, true, org[:limit], true, false, "200 OK (response body truncated)"},
		{"200 of exactly the limit", 200, exact, false, exact, false, true, "200 OK"},
		{"200 of exactly the limit, chunked", 200, exact, true, exact, false, true, "200 OK"},
		{"200 one byte over", 200, exact + " ", true, exact, true, false, "200 OK (response body truncated)"},
		{"422 longer", 422, `{"message":"` + strings.Repeat("m", 100) + `"}`, false,
			`{"message":"` + strings.Repeat("m", limit-len(`{"message":"`)), true, false, "422 Unprocessable Entity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request) {
				if !tt.chunked {
					w.Header().Set("Content-Length", fmt.Sprint(len(tt.body)))
				}
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			})
			c := newTestClient(t, rec.srv.URL, WithMaxResponseBody(limit), WithMaxErrorBody(limit))
			org, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			if is2xx(tt.status) && err != nil {
				t.Fatalf("UpdateOrganization: %v; a 2xx is applied, however long its body", err)
			}
			if resp == nil {
				t.Fatalf("no Response (error %v)", err)
			}
			type view struct {
				Body      string
				Truncated bool
				Org       bool
				Reason    string
			}
			want := view{tt.wantBody, tt.wantTruncated, tt.wantOrg, tt.wantReason}
			got := view{string(resp.Body), resp.Truncated, org != nil, Classify(resp, err).Reason}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
		})
	}
}

// endlessBody is a response body that never ends, counting what is read from it.
type endlessBody struct {
	read   atomic.Int64
	closed atomic.Bool
}

func (b *endlessBody) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	b.read.Add(int64(len(p)))
	return len(p), nil
}

func (b *endlessBody) Close() error { b.closed.Store(true); return nil }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestBodyReadIsBounded: however much a 2xx or an error answer sends, the client reads at most
// the limit, one byte to detect the overflow and the bounded drain, keeps no buffer larger than
// the limit, and closes the body.
func TestBodyReadIsBounded(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		status        int
		contentLength int64
		opts          []Option
		limit         int64
	}{
		{"200 default limit, unknown length", 200, -1, nil, DefaultMaxResponseBody},
		{"200 default limit, 60 MB announced", 200, 60_000_000, nil, DefaultMaxResponseBody},
		{"200 own limit", 200, -1, []Option{WithMaxResponseBody(100 << 10)}, 100 << 10},
		{"500 default limit", 500, -1, nil, DefaultMaxErrorBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body := &endlessBody{}
			hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				return &http.Response{StatusCode: tt.status, Header: http.Header{}, Body: body,
					ContentLength: tt.contentLength, Request: r}, nil
			})}
			c := newTestClient(t, "https://truto.invalid", append([]Option{WithHTTPClient(hc)}, tt.opts...)...)
			_, resp, _ := c.UpdateOrganization(testContext(t), validRequest())
			if resp == nil {
				t.Fatal("no Response")
			}
			type view struct {
				BodyLen, BodyCap int64
				Truncated        bool
				ReadAtMostBound  bool
				Closed           bool
			}
			read := body.read.Load()
			got := view{int64(len(resp.Body)), int64(cap(resp.Body)), resp.Truncated, read <= tt.limit+1+discardLimit, body.closed.Load()}
			want := view{tt.limit, tt.limit, true, true, true}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("read %d bytes of an endless body (-want +got):\n%s", read, diff)
			}
		})
	}
}

// TestRedirectNotFollowed: a 3xx would turn the PATCH into a GET or send the token elsewhere.
func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)
	rec := newRecorder(t, answer(307, map[string]string{"Location": other.URL + "/x"}, ""))
	c := newTestClient(t, rec.srv.URL)
	_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 307 {
		t.Fatalf("error = %v, want *APIError 307", err)
	}
	if d := Classify(resp, err); d.Class != ClassPermanent || !strings.Contains(d.Reason, "unexpected status") {
		t.Errorf("Classify = %+v, want permanent unexpected status", d)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the redirect target saw %d requests, want 0", n)
	}
}

// TestConnectionReuse: error bodies are drained and closed, so sequential calls share one connection.
func TestConnectionReuse(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(answer(500, nil, strings.Repeat("x", 10<<10)))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv.URL, WithMaxErrorBody(1024))
	for range 5 {
		_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
		if resp == nil || len(resp.Body) != 1024 || err == nil {
			t.Fatalf("resp = %+v, err = %v; want a 500 with a 1024-byte body", resp, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("server saw %d connections, want 1", n)
	}
}

func TestNewTransport(t *testing.T) {
	t.Parallel()
	tr := NewTransport(300)
	got := map[string]any{
		"MaxIdleConns>=300": tr.MaxIdleConns >= 300, "MaxIdleConnsPerHost": tr.MaxIdleConnsPerHost,
		"ForceAttemptHTTP2": tr.ForceAttemptHTTP2, "IdleConnTimeout": tr.IdleConnTimeout,
		"TLSHandshakeTimeout": tr.TLSHandshakeTimeout, "ResponseHeaderTimeout": tr.ResponseHeaderTimeout,
		"Proxy set": tr.Proxy != nil, "DialContext set": tr.DialContext != nil,
		"HTTP/2 stream window": tr.HTTP2 != nil && tr.HTTP2.MaxReceiveBufferPerStream == h2StreamWindow,
	}
	want := map[string]any{
		"MaxIdleConns>=300": true, "MaxIdleConnsPerHost": 300, "ForceAttemptHTTP2": true,
		"IdleConnTimeout": 90 * time.Second, "TLSHandshakeTimeout": 10 * time.Second,
		"ResponseHeaderTimeout": time.Duration(0), "Proxy set": true, "DialContext set": true,
		"HTTP/2 stream window": true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("transport (-want +got):\n%s", diff)
	}
	if def := NewTransport(0); def.MaxIdleConnsPerHost != DefaultMaxConnsPerHost {
		t.Errorf("NewTransport(0).MaxIdleConnsPerHost = %d, want %d", def.MaxIdleConnsPerHost, DefaultMaxConnsPerHost)
	}
}

// TestTokenNeverShown looks for the token everywhere a caller might print or store something,
// with a server that echoes it back.
func TestTokenNeverShown(t *testing.T) {
	t.Parallel()
	echo := func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		w.Header().Set("X-Request-Id", auth)
		status := 401
		if r.URL.Query().Get("integrated_account_id") == "ok" {
			status = 200
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"id":"x","statusCode":%d,"error":%q,"message":%q,"raw_response":%q}`, status, auth, auth, auth)
	}
	rec := newRecorder(t, echo)
	c := newTestClient(t, rec.srv.URL)
	var shown []string
	show := func(vs ...any) {
		for _, v := range vs {
			shown = append(shown, fmt.Sprintf("%v %+v %#v %s", v, v, v, v))
		}
	}
	show(c, *c)

	for _, account := range []string{"denied", "ok"} {
		req := validRequest()
		req.IntegratedAccountID = account
		org, resp, err := c.UpdateOrganization(testContext(t), req)
		show(org, resp, err, Classify(resp, err), string(resp.Body))
		var apiErr *APIError
		if errors.As(err, &apiErr) {
			show(apiErr, *apiErr, apiErr.Error())
		}
	}

	refused := newTestClient(t, closedURL(t))
	_, resp, err := refused.UpdateOrganization(testContext(t), validRequest())
	show(resp, err)
	_, err = New(testToken, WithBaseURL("::"))
	show(err)

	for _, s := range shown {
		if strings.Contains(s, testToken) {
			t.Errorf("token shown in: %s", s)
		}
	}
	// The wire request carries the token in Authorization and nowhere else.
	for _, r := range rec.requests() {
		r.Header.Del("Authorization")
		if dump := fmt.Sprintf("%+v %s", r, r.Body); strings.Contains(dump, testToken) {
			t.Errorf("token outside Authorization in request: %s", dump)
		}
	}
}

// closedURL returns the URL of a port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return "http://" + addr
}

func TestCheckResponse(t *testing.T) {
	t.Parallel()
	req, _ := http.NewRequest(http.MethodPatch, "https://h/unified/user-directory/organizations/a%2Fb?integrated_account_id=x", nil)
	ok := &http.Response{StatusCode: 204, Body: io.NopCloser(strings.NewReader("")), Request: req}
	if err := CheckResponse(ok, 0); err != nil {
		t.Errorf("CheckResponse(204) = %v, want nil", err)
	}
	bad := &http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"3"}}, Request: req,
		Body: io.NopCloser(strings.NewReader(`{"statusCode":429,"error":"Too Many Requests","message":"slow down"}`))}
	err := CheckResponse(bad, 0)
	var rl *RateLimitError
	if !errors.As(err, &rl) || rl.RetryAfter != 3*time.Second {
		t.Fatalf("CheckResponse(429) = %v, want *RateLimitError with 3s", err)
	}
	want := "rate limited, retry after 3s: PATCH /unified/user-directory/organizations/a%2Fb: 429 Too Many Requests: slow down"
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
