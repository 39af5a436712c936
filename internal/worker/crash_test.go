package worker

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// dyingSender sends each request, then never returns: the process dies
// after Truto applied the update and before the ledger knew.
type dyingSender struct {
	next    tasks.Sender
	release chan struct{}
}

func (s dyingSender) UpdateOrganization(ctx context.Context, req *trutoclient.UpdateOrganizationRequest) (*trutoclient.Organization, *trutoclient.Response, error) {
	org, res, err := s.next.UpdateOrganization(ctx, req)
	<-s.release
	return org, res, err
}

// TestKilledWorkerUpdatesGoAgain: a worker dies (its Redis connections go
// away, nothing is settled) after Truto applied its updates. Once its
// leases run out and an admitter reaps them (every 2 s), another worker runs
// them under a new generation; the idempotency key makes Truto replay its
// answer, so each is applied exactly once.
//
// Both workers hold 3-second leases instead of the default 10 s (Config.Lease,
// --lease): the lease's length is a setting, not what is proven, and the
// survivor renewing its own every second is the harder case.
func TestKilledWorkerUpdatesGoAgain(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	fake := trutotest.NewServer(testToken, trutotest.WithSeed(1))
	t.Cleanup(fake.Close)
	cfg := testConfig(srv.URL(), fake.URL)
	cfg.AdminAddr = ""
	cfg.Lease = 3 * time.Second
	client, err := trutoclient.New(testToken, trutoclient.WithBaseURL(fake.URL))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })

	// The worker that dies reaches Redis through a proxy: cutting it is, for
	// Redis, the process going away. (Closing its client instead would crash
	// asynq's cancelation subscriber, which reads the closed channel.)
	proxy := startProxy(t, srv.Addr)
	doomedRDB := redis.NewClient(&redis.Options{Addr: proxy.addr()})
	doomed, err := New(context.Background(), cfg, WithRedis(doomedRDB), WithSender(dyingSender{next: client, release: release}),
		WithLogger(NewLogger(io.Discard, "error")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- doomed.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		releaseOnce.Do(func() { close(release) })
		<-done // its errors are a dead process's: not checked
		_ = doomedRDB.Close()
	})

	store := tasks.NewStore(srv.Client(), tasks.WithResultTTL(cfg.ResultTTL))
	producer := tasks.NewProducer(store)
	const n = 20
	ids := make([]string, n)
	for i := range n {
		u := tasks.Update{ID: fmt.Sprintf("org-%03d", i), IntegratedAccountID: fmt.Sprintf("acct-%d", i%4),
			IdempotencyKey: fmt.Sprintf("kill-%03d", i), Body: jsonRaw(fmt.Sprintf(`{"seq":%d}`, i))}
		if _, err := producer.Enqueue(context.Background(), u); err != nil {
			t.Fatal(err)
		}
		ids[i] = tasks.TaskID(u.IntegratedAccountID, u.IdempotencyKey)
	}
	testrig.WaitFor(t, "Truto applied every update", time.Minute, func() (bool, string) {
		st := fake.Stats()
		return st.Effects == n, fmt.Sprint(st.Effects)
	})
	proxy.cut()
	killed := time.Now()

	// The survivor.
	var mu sync.Mutex
	outcomes := map[string]int{}
	survivor, err := New(context.Background(), cfg, WithLogger(NewLogger(io.Discard, "error")), WithObserver(func(e tasks.Event) {
		mu.Lock()
		outcomes[string(e.Outcome)+"/"+string(e.Class)]++
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- survivor.Run(sctx) }()
	t.Cleanup(func() {
		scancel()
		if err := <-sdone; err != nil {
			t.Errorf("survivor Run: %v", err)
		}
	})
	// asynq alone would hand the dead worker's tasks back only after its own
	// lease recovery (about 90 s); admission's lease and reaper take ~5 s.
	testrig.WaitFor(t, "every update completed by the survivor", 40*time.Second, func() (bool, string) {
		c := 0
		for _, id := range ids {
			if rec, err := store.Ledger().Get(context.Background(), id); err == nil && rec.State == tasks.StatusCompleted {
				c++
			}
		}
		return c == n, fmt.Sprintf("%d of %d", c, n)
	})
	took := time.Since(killed)
	st := fake.Stats()
	keys := make([]string, n)
	for i := range n {
		keys[i] = tasks.UpstreamKey(fmt.Sprintf("acct-%d", i%4), fmt.Sprintf("kill-%03d", i))
	}
	if c := fake.CountEffects(keys); c.Lost != 0 || c.Duplicated != 0 || st.DuplicateEffects != 0 || st.Replays != n {
		t.Errorf("lost %d, duplicated %d, fake %+v; want each applied once and replayed once", c.Lost, c.Duplicated, st)
	}
	for _, id := range ids {
		if rec, _ := store.Ledger().Get(context.Background(), id); rec.Result == nil || !rec.Result.Replayed {
			t.Errorf("%s: result %+v, want Truto's replayed answer", id, rec.Result)
		}
	}
	mu.Lock()
	t.Logf("a worker killed after applying %d updates: the survivor completed them %.1fs later (lease %s + reap %s); outcomes %v",
		n, took.Seconds(), cfg.Lease, admission.DefaultReapInterval, outcomes)
	mu.Unlock()
}

// proxy forwards TCP connections to a Redis server until cut.
type proxy struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	conns []net.Conn
	dead  bool
}

func startProxy(t *testing.T, to string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, to: to}
	t.Cleanup(p.cut)
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.to)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		if p.dead {
			p.mu.Unlock()
			in.Close()
			out.Close()
			return
		}
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(out, in); out.Close() }()
		go func() { _, _ = io.Copy(in, out); in.Close() }()
	}
}

// cut closes the listener and every connection: nothing gets through again.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dead {
		return
	}
	p.dead = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
}
