package admin

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// checkHost refuses requests whose Host header names neither localhost, an
// IP address nor one of allowed ("*" allows any), so a web page that
// rebinds its own DNS name to 127.0.0.1 cannot read the endpoint through the
// operator's browser: the browser still sends the page's name as Host.
// IP addresses pass because a rebinding page always comes under a name, and
// probes and scrapers that address the worker by its IP must pass. The
// health checks pass whatever the Host: they reveal nothing worth a
// rebinding, and probes that set their own Host must reach them.
//
// A refused request gets 421 Misdirected Request: the request was sent to
// a server that does not serve that name (RFC 9110, 15.5.20). 403 would read
// as a missing permission, which no token can fix here.
func checkHost(allowed []string, next http.Handler) http.Handler {
	names := map[string]bool{"localhost": true}
	for _, h := range allowed {
		if h == "*" {
			return next
		}
		names[hostName(h)] = true
	}
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(rw, r)
			return
		}
		name := hostName(r.Host)
		if _, err := netip.ParseAddr(name); err == nil || names[name] {
			next.ServeHTTP(rw, r)
			return
		}
		writeError(rw, http.StatusMisdirectedRequest, fmt.Sprintf(
			"host %q is not served here: use the worker's address (http://127.0.0.1:PORT/) or add the name to --admin-allowed-hosts (ORGSYNC_ADMIN_ALLOWED_HOSTS)",
			r.Host))
	})
}

// hostName is the name or address in a Host header or an allowed-hosts
// entry, without port, brackets or a trailing dot, in lower case.
func hostName(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.Trim(h, "[]"), ".")
	return strings.ToLower(h)
}

// ParseAllowedHosts reads a comma-separated --admin-allowed-hosts value:
// host names or addresses, each with or without a port, or "*" for any.
func ParseAllowedHosts(s string) ([]string, error) {
	var hosts []string
	for _, h := range strings.Split(s, ",") {
		h = strings.TrimSpace(h)
		switch {
		case h == "":
			continue
		case h == "*":
		case strings.ContainsAny(h, "/@?# \t") || hostName(h) == "":
			return nil, fmt.Errorf("%q is not a host name: expected names such as orgsync.internal or worker:9464, or *", h)
		}
		hosts = append(hosts, h)
	}
	return hosts, nil
}
