package trutotest

import (
	"net/http"
	"net/http/httptest"
)

// Server is a Fake listening on a loopback port.
type Server struct {
	*Fake
	URL string // base URL, e.g. http://127.0.0.1:PORT, to use as the client's base URL

	srv *httptest.Server
}

// NewServer starts a fake Truto on 127.0.0.1 on a free port.
func NewServer(token string, opts ...Option) *Server {
	f := New(token, opts...)
	s := httptest.NewServer(f)
	return &Server{Fake: f, URL: s.URL, srv: s}
}

// Client returns an HTTP client for the server (its own transport, so closing it frees
// the connections).
func (s *Server) Client() *http.Client { return s.srv.Client() }

// Close releases hung and delayed requests, then stops the server and waits for its handlers.
func (s *Server) Close() {
	s.Shutdown()
	s.srv.CloseClientConnections()
	s.srv.Close()
}
