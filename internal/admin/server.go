package admin

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Limits of the admin HTTP server. Every request it serves is small: the
// longest are a /api/deadletters or /api/runs/{name}/results listing of up
// to 10,000 lines and the queue UI's pages, each bounded by a 10 s Redis
// read, and a /metrics scrape, bounded by its 5 s scrape timeout.
const (
	// DefaultMaxConns is how many connections the endpoint holds at once.
	// Prometheus, a probe and a browser or two need a few; each one held is a
	// file descriptor the worker's Redis and Truto connections may need.
	DefaultMaxConns = 128
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout = 15 * time.Second
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer: room for the 10 s reads plus streaming the answer.
	WriteTimeout = 60 * time.Second
	// IdleTimeout closes a keep-alive connection left unused this long.
	IdleTimeout = 30 * time.Second
	// MaxHeaderBytes bounds a request's headers (net/http's default is 1 MiB).
	MaxHeaderBytes = 64 << 10
)

// Server is the admin endpoint's HTTP server: net/http's with every timeout
// set and a cap on the connections it holds, so that idle or slow clients
// cannot use up the worker's file descriptors.
type Server struct {
	http *http.Server
	ln   *connLimit
}

// NewServer serves h on ln, holding at most maxConns connections
// (DefaultMaxConns when maxConns <= 0).
// Errors of the HTTP server itself (a failed accept, a bad TLS handshake) go
// to logger.
func NewServer(ln net.Listener, h http.Handler, maxConns int, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	cl := newConnLimit(ln, maxConns)
	return &Server{
		ln: cl,
		http: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: ReadHeaderTimeout,
			ReadTimeout:       ReadTimeout,
			WriteTimeout:      WriteTimeout,
			IdleTimeout:       IdleTimeout,
			MaxHeaderBytes:    MaxHeaderBytes,
			ConnState:         cl.track,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
	}
}

// Serve serves until Shutdown; it returns http.ErrServerClosed then.
func (s *Server) Serve() error { return s.http.Serve(s.ln) }

// Shutdown stops accepting, closes idle connections and waits for the
// others to finish, or for ctx.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// connLimit is a listener that holds at most max connections. When a new
// connection arrives at the cap, the one quiet longest is closed to make
// room: a keep-alive connection between requests, or one that has not sent
// its first request yet. When every held connection is serving a request,
// the newcomer waits for one to finish. So a flood of idle or silent
// connections cannot lock out a health check (a probe sends its request at
// once, and a connection serving a request is never closed), and the
// descriptors held stay at max + 1 (the newcomer in hand) whatever the
// flood; the rest wait in the kernel's accept queue, costing nothing.
type connLimit struct {
	net.Listener
	max    int
	mu     sync.Mutex
	open   int
	quiet  map[*limitedConn]time.Time // connections serving no request, and since when
	wake   chan struct{}              // a connection closed or went quiet
	closed chan struct{}
	once   sync.Once
}

func newConnLimit(ln net.Listener, n int) *connLimit {
	return &connLimit{
		Listener: ln, max: n, quiet: map[*limitedConn]time.Time{},
		wake: make(chan struct{}, 1), closed: make(chan struct{}),
	}
}

// Accept takes the next connection, then waits for room for it.
func (l *connLimit) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		l.mu.Lock()
		if l.open < l.max {
			l.open++
			l.mu.Unlock()
			return &limitedConn{Conn: c, l: l}, nil
		}
		victim := l.longestQuiet()
		l.mu.Unlock()
		if victim != nil {
			_ = victim.Close()
			continue
		}
		select {
		case <-l.wake:
		case <-l.closed:
			_ = c.Close()
			return nil, net.ErrClosed
		}
	}
}

// Close stops Accept, including one waiting for room.
func (l *connLimit) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// longestQuiet removes and returns the connection quiet longest, or nil; l.mu is held.
func (l *connLimit) longestQuiet() *limitedConn {
	var victim *limitedConn
	var since time.Time
	for c, t := range l.quiet {
		if victim == nil || t.Before(since) {
			victim, since = c, t
		}
	}
	delete(l.quiet, victim)
	return victim
}

// track follows the HTTP server's view of each connection (http.Server.ConnState).
func (l *connLimit) track(c net.Conn, state http.ConnState) {
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	quiet := state == http.StateNew || state == http.StateIdle
	l.mu.Lock()
	if quiet {
		l.quiet[lc] = time.Now()
	} else {
		delete(l.quiet, lc)
	}
	l.mu.Unlock()
	if quiet {
		l.signal()
	}
}

func (l *connLimit) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// release gives back c's place; it runs once per connection.
func (l *connLimit) release(c *limitedConn) {
	l.mu.Lock()
	l.open--
	delete(l.quiet, c)
	l.mu.Unlock()
	l.signal()
}

// limitedConn gives its place back when closed, by the server, a hijacker
// or connLimit making room.
type limitedConn struct {
	net.Conn
	l    *connLimit
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c) })
	return err
}
