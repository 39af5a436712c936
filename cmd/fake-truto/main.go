// Command fake-truto serves the fake Truto API of package trutotest on a TCP address, for
// demos, benchmarks and manual tests. It prints {"addr":"http://HOST:PORT"} on stdout once it
// listens, logs JSON on stderr, and never logs the token.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return
	}
	fmt.Fprintln(os.Stderr, "fake-truto:", err)
	var ue usageError
	if errors.As(err, &ue) {
		os.Exit(2)
	}
	os.Exit(1)
}

// usageError is a bad command line; main exits 2 for it.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// config is the parsed command line.
type config struct {
	addr   string
	token  string
	seed   uint64
	faults trutotest.Faults
}

// run serves until ctx ends, then shuts down gracefully.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	fake := trutotest.New(cfg.token, trutotest.WithFaults(cfg.faults), trutotest.WithSeed(cfg.seed))

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on --addr %s: %w", cfg.addr, err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	addr := "http://" + ln.Addr().String()
	line, _ := json.Marshal(map[string]string{"addr": addr})
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		_ = srv.Close()
		return fmt.Errorf("write the address to stdout: %w", err)
	}
	log.Info("listening", "addr", addr, "faults", cfg.faults, "seed", cfg.seed)

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	fake.Shutdown() // release delayed and hung requests so Shutdown need not wait for them
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped", "stats", fake.Stats())
	return nil
}

// parseFlags reads the command line; every error names the flag and the expected form.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := config{faults: trutotest.DefaultFaults()}
	fs := flag.NewFlagSet("fake-truto", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "`host:port` to listen on (port 0 picks a free one)")
	fs.StringVar(&cfg.token, "token", "", "API `token` clients must send as Bearer")
	tokenFile := fs.String("token-file", "", "`file` holding the API token (instead of --token)")
	fs.Func("latency", "added latency per request (a Go `duration`)", durationFlag(&cfg.faults.Latency))
	fs.Func("jitter", "random extra latency up to this Go `duration`", durationFlag(&cfg.faults.LatencyJitter))
	fs.Func("account-limit", "per integrated account limit, `N/window` such as 50/10s; 0 = none", limitFlag(&cfg.faults.AccountLimit))
	fs.Func("token-limit", "per token limit, `N/window` such as 500/10s; 0 = none", limitFlag(&cfg.faults.TokenLimit))
	fs.Func("error-rate", "`STATUS=P` answer STATUS with probability P before applying (repeatable)", rateFlag(&cfg.faults.ErrorRates))
	fs.Func("after-apply-rate", "`STATUS=P` apply, then answer STATUS with probability P (repeatable)", rateFlag(&cfg.faults.AfterApplyRates))
	fs.Func("account-status", "`ACCOUNT=STATUS` always answer STATUS for that integrated account (repeatable)", statusFlag(&cfg.faults.AccountStatus))
	fs.Func("org-status", "`ID=STATUS` always answer STATUS for that organization id (repeatable)", statusFlag(&cfg.faults.OrgStatus))
	fs.BoolVar(&cfg.faults.IgnoreIdempotency, "ignore-idempotency", false, "apply repeated Idempotency-Keys again (exposes duplicates)")
	fs.BoolVar(&cfg.faults.RateLimitHeaders, "rate-limit-headers", false, "send ratelimit-* headers on successes too")
	fs.Uint64Var(&cfg.seed, "seed", 1, "random `seed` for injected faults")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, usageError{err}
	}
	if fs.NArg() > 0 {
		return cfg, usageError{fmt.Errorf("unexpected argument %q: fake-truto takes flags only", fs.Arg(0))}
	}
	if *tokenFile != "" {
		if cfg.token != "" {
			return cfg, usageError{errors.New("--token and --token-file: give one, not both")}
		}
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return cfg, usageError{fmt.Errorf("--token-file: %w", err)}
		}
		cfg.token = strings.TrimSpace(string(b))
	}
	if cfg.token == "" {
		return cfg, usageError{errors.New("--token or --token-file is required: the API token clients must send")}
	}
	if err := cfg.faults.Validate(); err != nil {
		return cfg, usageError{fmt.Errorf("faults: %w", err)}
	}
	return cfg, nil
}

func durationFlag(d *trutotest.Duration) func(string) error {
	return func(s string) error {
		v, err := time.ParseDuration(s)
		if err != nil || v < 0 {
			return fmt.Errorf("%q: want a Go duration >= 0 such as 20ms", s)
		}
		*d = trutotest.Duration(v)
		return nil
	}
}

// parseLimit reads "N/window" ("50/10s"), or "0" for no limit.
func parseLimit(s string) (trutotest.Limit, error) {
	if s == "0" {
		return trutotest.Limit{}, nil
	}
	n, w, ok := strings.Cut(s, "/")
	reqs, err1 := strconv.Atoi(n)
	win, err2 := time.ParseDuration(w)
	if !ok || err1 != nil || err2 != nil || reqs < 0 || win <= 0 {
		return trutotest.Limit{}, fmt.Errorf("%q: want N/window such as 50/10s, or 0 for no limit", s)
	}
	return trutotest.Limit{Requests: reqs, Window: trutotest.Duration(win)}, nil
}

func limitFlag(l *trutotest.Limit) func(string) error {
	return func(s string) error {
		v, err := parseLimit(s)
		if err != nil {
			return err
		}
		*l = v
		return nil
	}
}

func rateFlag(m *map[int]float64) func(string) error {
	return func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		status, err1 := strconv.Atoi(k)
		p, err2 := strconv.ParseFloat(v, 64)
		if !ok || err1 != nil || err2 != nil || status < 400 || status > 599 || !(p >= 0 && p <= 1) {
			return fmt.Errorf("%q: want STATUS=PROBABILITY such as 500=0.05", s)
		}
		if *m == nil {
			*m = map[int]float64{}
		}
		(*m)[status] = p
		return nil
	}
}

func statusFlag(m *map[string]int) func(string) error {
	return func(s string) error {
		i := strings.LastIndex(s, "=")
		var status int
		var err error
		if i > 0 {
			status, err = strconv.Atoi(s[i+1:])
		}
		if i <= 0 || err != nil || status < 400 || status > 599 {
			return fmt.Errorf("%q: want KEY=STATUS such as acc-1=401", s)
		}
		if *m == nil {
			*m = map[string]int{}
		}
		(*m)[s[:i]] = status
		return nil
	}
}
