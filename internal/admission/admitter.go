package admission

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultReapInterval is how often an admitter looks for updates whose lease
// ran out; with DefaultLease, a killed worker's updates go again within
// about 12 s.
const DefaultReapInterval = 2 * time.Second

// Leases is the set of updates one process's workers run, whose leases one
// heartbeat keeps alive. (An admitted update's lease is not renewed: a worker
// must start it within one lease, or it goes back.)
type Leases struct {
	s     *Scheduler
	owner string
	mu    sync.Mutex
	ids   map[string]lease // id -> the generation held, and its shard
}

type lease struct {
	gen   int64
	shard int
}

// NewLeases returns the lease set of the process owner.
func NewLeases(s *Scheduler, owner string) *Leases {
	return &Leases{s: s, owner: owner, ids: map[string]lease{}}
}

// Owner is the process id the leases are held under.
func (l *Leases) Owner() string { return l.owner }

// Hold adds generation gen of id, an update of account, to the set.
func (l *Leases) Hold(account, id string, gen int64) {
	shard := ShardOf(account, len(l.s.known()))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids[id] = lease{gen: gen, shard: shard}
}

// Release drops generation gen of id from the set; a later generation of the
// same update (admitted again meanwhile) keeps its lease.
func (l *Leases) Release(id string, gen int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if g, ok := l.ids[id]; ok && g.gen == gen {
		delete(l.ids, id)
	}
}

// drop removes ids whatever their generation (their leases are lost).
func (l *Leases) drop(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		delete(l.ids, id)
	}
}

// Len is how many leases the set holds.
func (l *Leases) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ids)
}

// Renew extends every lease in the set once and drops those held no longer.
func (l *Leases) Renew(ctx context.Context) error {
	l.mu.Lock()
	byShard := map[int][]string{}
	for id, le := range l.ids {
		byShard[le.shard] = append(byShard[le.shard], id)
	}
	l.mu.Unlock()
	for shard, ids := range byShard {
		for len(ids) > 0 {
			n := min(len(ids), 500)
			lost, err := l.s.Extend(ctx, shard, l.owner, ids[:n])
			if err != nil {
				return err
			}
			l.drop(lost)
			ids = ids[n:]
		}
	}
	return nil
}

// Run renews the leases every third of the lease until ctx ends.
func (l *Leases) Run(ctx context.Context, logger *slog.Logger) {
	t := time.NewTicker(l.s.c.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := l.Renew(ctx); err != nil && ctx.Err() == nil {
				logger.Warn("could not renew admission leases; their updates go again elsewhere if this lasts",
					"leases", l.Len(), "error", err.Error())
			}
		}
	}
}

// Gate is asked before each admission pass (the circuit breaker). When allow
// is false nothing is admitted and the admitter looks again after wait; when
// probe is true one update is admitted, marked as the probe.
type Gate func(ctx context.Context) (allow, probe bool, wait time.Duration, err error)

// Admitter runs admission in one process: it admits what can go now, hands
// the tickets to deliver (which puts them on the queue), and sleeps until the
// next slot or until woken. It also puts back updates whose lease ran out.
type Admitter struct {
	s       *Scheduler
	leases  *Leases
	deliver Deliver
	logger  *slog.Logger
	reap    time.Duration
	gate    Gate
	// Woken counts admission passes started by a wake-up rather than a timer
	// (for tests and metrics); read it with Passes.
	mu            sync.Mutex
	passes, woken int64
}

// Deliver hands admitted tickets to the queue, in order, and says how many
// it handed over before an error.
type Deliver func(context.Context, []Ticket) (int, error)

// NewAdmitter returns an admitter for the process whose leases are leases.
// deliver must enqueue each ticket for a worker; the tickets it could not
// hand over go back to their lanes at once.
func NewAdmitter(s *Scheduler, leases *Leases, deliver Deliver, logger *slog.Logger) *Admitter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Admitter{s: s, leases: leases, deliver: deliver, logger: logger, reap: DefaultReapInterval}
}

// SetGate makes every pass ask g first. Call it before Run.
func (a *Admitter) SetGate(g Gate) { a.gate = g }

// Passes reports how many admission passes ran, and how many of them a
// wake-up started.
func (a *Admitter) Passes() (passes, woken int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.passes, a.woken
}

// Run admits until ctx ends: one loop per admission shard, each asleep on
// its own shard's wake-ups. Redis errors are logged once per outage and
// retried.
func (a *Admitter) Run(ctx context.Context) {
	var shards int
	for ctx.Err() == nil {
		n, err := a.s.Shards(ctx)
		if err == nil {
			shards = n
			break
		}
		a.logger.Warn("admission cannot read its shard count; retrying", "error", err.Error())
		sleep(ctx, time.Second)
	}
	var wg sync.WaitGroup
	for i := range shards {
		wg.Add(1)
		go func() { defer wg.Done(); a.loop(ctx, i) }()
	}
	wg.Wait()
}

// loop admits from shard i until ctx ends.
func (a *Admitter) loop(ctx context.Context, i int) {
	var lastReap time.Time
	failing := false
	woken := false
	for ctx.Err() == nil {
		if time.Since(lastReap) >= a.reap {
			switch n, err := a.s.reap(ctx, i, 1000); {
			case err != nil && !failing && ctx.Err() == nil:
				a.logger.Warn("could not look for updates whose lease ran out; trying again", "error", err.Error())
			case n > 0:
				a.logger.Info("updates whose lease ran out go again", "updates", n)
			}
			lastReap = time.Now()
		}
		n, probe := a.s.c.Batch, false
		if a.gate != nil {
			allow, pr, wait, err := a.gate(ctx)
			if err == nil && !allow {
				// Nothing goes while the circuit is open but its probes.
				_, _ = a.s.Wait(ctx, i, min(max(wait, 10*time.Millisecond), a.reap))
				woken = false
				continue
			}
			if pr {
				n, probe = 1, true
			}
		}
		var tickets []Ticket
		var next time.Time
		var err error
		if probe {
			tickets, next, err = a.probe(ctx, i)
		} else {
			tickets, next, err = a.s.admit(ctx, i, a.leases.Owner(), n, false)
		}
		a.mu.Lock()
		a.passes++
		if woken {
			a.woken++
		}
		a.mu.Unlock()
		if err != nil {
			if !failing && ctx.Err() == nil {
				a.logger.Warn("admission cannot reach Redis; retrying", "error", err.Error())
			}
			failing = true
			sleep(ctx, time.Second)
			continue
		}
		if failing {
			a.logger.Info("admission reaches Redis again")
			failing = false
		}
		if len(tickets) > 0 {
			a.hand(ctx, tickets)
		}
		wait := min(time.Until(next), a.reap)
		if wait <= 0 {
			woken = false
			continue
		}
		woken, err = a.s.Wait(ctx, i, wait)
		if err != nil && ctx.Err() == nil {
			sleep(ctx, 100*time.Millisecond)
		}
	}
}

// hand delivers tickets. Delivery is not cut short by ctx (a stopping
// process finishes the batch it admitted); what could not be handed over
// goes back to its lane.
func (a *Admitter) hand(ctx context.Context, tickets []Ticket) {
	n, err := a.deliver(context.WithoutCancel(ctx), tickets)
	if err == nil {
		return
	}
	rest := tickets[min(max(n, 0), len(tickets)):]
	a.logger.Warn("could not hand admitted updates to the queue; they go back to their lanes",
		"updates", len(rest), "error", err.Error())
	for _, t := range rest {
		// If this fails too, the lease runs out and the reaper puts it back.
		_, _ = a.s.Unadmit(context.WithoutCancel(ctx), t)
	}
}

// probe admits the open circuit's one probe: from shard i, or, when it has
// nothing ready, from the next shard that has.
func (a *Admitter) probe(ctx context.Context, i int) ([]Ticket, time.Time, error) {
	all, err := a.s.all(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	next := Never
	for k := range all {
		tickets, nx, err := a.s.admit(ctx, (i+k)%len(all), a.leases.Owner(), 1, true)
		if err != nil {
			return nil, time.Time{}, err
		}
		if len(tickets) == 1 {
			tickets[0].Probe = true
			return tickets, nx, nil
		}
		if k == 0 {
			next = nx
		}
	}
	return nil, next, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
