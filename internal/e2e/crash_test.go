package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// The crash tests run the real binaries and break them the way production
// does: a worker SIGKILLed mid-batch, redis-server killed and restarted under
// a running worker, a SIGTERM whose in-flight requests outlast the drain.
// Each judges the outcome by the fake's counts (nothing lost, nothing applied
// twice, nothing dead-lettered) and by orgsync's ledger (no retry budget
// spent on a fault that was not the update's).

// crashRig is one test's private Redis, fake Truto and input file.
type crashRig struct {
	rds      *redistest.Server     // the private Redis; nil on a Cluster or Sentinel set-up
	rdb      redis.UniversalClient // a client of the Redis the binaries use, for the test's own reads
	fake     string                // the fake's base URL
	env      []string              // the environment of worker and enqueue
	run      string                // the bulk run name
	lines    [][]byte              // the input, one update per line
	accounts []string              // each line's integrated account
	input    string                // the input file, once written
	keys     []string              // the idempotency key of each line, from the run name
	sent     []string              // the Idempotency-Key each line's update is sent under
}

// newCrashRig starts Redis (AOF, fsync always) and a fake Truto with no rate
// limits and the given latency, and writes n updates, one per organization
// over 10 accounts, to an input file.
func newCrashRig(t *testing.T, n int, latency, jitter string) *crashRig {
	t.Helper()
	rds := redistest.Start(t, redistest.WithAOF())
	r := newRig(t, rds.URL(), rds.Client(), workload{n: n, accounts: 10, perOrg: 1},
		"--account-limit", "0", "--token-limit", "0", "--latency", latency, "--jitter", jitter)
	r.rds = rds
	return r
}

// workload is the shape of a rig's input: n updates over accounts
// integrated accounts, perOrg numbered updates to each organization.
type workload struct{ n, accounts, perOrg int }

// newRig starts a fake Truto with fakeArgs and writes w's updates to an
// input file, for the binaries to run against the Redis at redisURL (rdb is
// a client of it for the test's own reads). Line i updates organization
// i mod n/perOrg, so an organization's updates come round by round, in
// the order of their "seq" (i), which the fake checks they apply in.
func newRig(t *testing.T, redisURL string, rdb redis.UniversalClient, w workload, fakeArgs ...string) *crashRig {
	t.Helper()
	tokenFile := testrig.TokenFile(t, token)
	fake := startFake(t, tokenFile, fakeArgs...)
	r := &crashRig{rdb: rdb, fake: fake, run: "crash",
		env: []string{"REDIS_URL=" + redisURL, "TRUTO_API_TOKEN_FILE=" + tokenFile, "TRUTO_BASE_URL=" + fake, "TRUTO_API_TOKEN="}}
	orgs := w.n / max(w.perOrg, 1)
	for i := 0; i < w.n; i++ {
		org := i % orgs
		account := fmt.Sprintf("acct-%02d", org%w.accounts)
		l := fmt.Appendf(nil, `{"id":"org-%06d","integrated_account_id":"%s","body":{"seq":%d,"remote_data":{"tier":"gold"}}}`, org, account, i)
		r.lines = append(r.lines, l)
		r.accounts = append(r.accounts, account)
		r.keys = append(r.keys, tasks.RunKey(r.run, i+1, l))
		r.sent = append(r.sent, tasks.UpstreamKey(account, r.keys[i]))
	}
	return r
}

// enqueue bulk-enqueues the input file and checks every line went.
func (r *crashRig) enqueue(t *testing.T) {
	t.Helper()
	sum, res, err := r.bulk(t)
	if err != nil || res.code != 0 || sum.Enqueued != len(r.lines) {
		t.Fatalf("bulk: exit %d, stdout %q, stderr %q: want exit 0 and %d enqueued (%v)", res.code, res.stdout, res.stderr, len(r.lines), err)
	}
}

// bulkSummary is the first line enqueue bulk prints.
type bulkSummary struct{ Enqueued, Duplicates, Invalid, Failed int }

// bulk runs enqueue bulk of the input file (written at the first call, the
// same file every time after) under the rig's run name, and returns its
// summary; err says the summary did not decode.
func (r *crashRig) bulk(t *testing.T) (bulkSummary, result, error) {
	t.Helper()
	if r.input == "" {
		r.input = filepath.Join(t.TempDir(), "updates.ndjson")
		if err := os.WriteFile(r.input, append(bytes.Join(r.lines, []byte("\n")), '\n'), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return r.bulkFile(t, r.input)
}

// bulkFile runs enqueue bulk of path under the rig's run name and returns
// its summary; err says the summary did not decode.
func (r *crashRig) bulkFile(t *testing.T, path string) (bulkSummary, result, error) {
	t.Helper()
	res := runCmd(t, r.env, "", "enqueue", "bulk", path, "--run", r.run)
	var sum bulkSummary
	err := json.Unmarshal([]byte(strings.SplitN(res.stdout, "\n", 2)[0]), &sum)
	return sum, res, err
}

// startWorker starts a worker with the crash tests' settings plus extra flags
// and waits until its /readyz answers 200; it returns the process and the
// admin address.
func (r *crashRig) startWorker(t *testing.T, extra ...string) (*proc, string) {
	t.Helper()
	admin := freeAddr(t)
	args := append([]string{"--admin-addr", admin, "--concurrency", "20", "--poll-interval", "100ms",
		"--retry-poll-interval", "200ms", "--retry-base", "200ms"}, extra...)
	w, _ := start(t, r.env, "worker", args...)
	waitFor(t, "the worker to be ready", 30*time.Second, func() (bool, string) {
		code, body := readyz(admin)
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
	return w, admin
}

// stats reads the fake's counts.
func (r *crashRig) stats(t *testing.T) fakeStats {
	t.Helper()
	var st fakeStats
	getJSON(t, r.fake+"/_fake/stats", &st)
	return st
}

// waitDone waits until the fake has applied every update and admission
// holds none of them (it forgets an update once it completed or died), and
// returns the fake's counts at that point. asynq's queue is not the measure:
// a killed worker's runs stay "active" there until asynq's own lease
// recovery, long after admission handed their updates to another worker, and
// then end as stale tickets.
func (r *crashRig) waitDone(t *testing.T, timeout time.Duration) fakeStats {
	t.Helper()
	n := len(r.lines)
	deadline := time.Now().Add(timeout)
	var st fakeStats
	waitFor(t, "every update applied upstream", timeout, func() (bool, string) {
		st = r.stats(t)
		return st.Effects >= n, fmt.Sprintf("%+v", st)
	})
	r.waitAdmissionEmpty(t, "admission to hold no update", max(time.Until(deadline), 10*time.Second))
	return r.stats(t)
}

// waitAdmissionEmpty waits until `enqueue stats` says admission holds no
// update and no park.
func (r *crashRig) waitAdmissionEmpty(t *testing.T, what string, timeout time.Duration) {
	t.Helper()
	waitFor(t, what, timeout, func() (bool, string) {
		s, ok, desc := r.enqueueStats(t)
		a := s.Admission
		return ok && a.Scheduled+a.Admitted+a.Running+a.Parked == 0 && a.AllParked == "", desc
	})
}

// enqueueStats runs `enqueue stats`; ok says it answered, desc is its output.
func (r *crashRig) enqueueStats(t *testing.T) (s tasks.Stats, ok bool, desc string) {
	t.Helper()
	res := runCmd(t, r.env, "", "enqueue", "stats")
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &s) != nil {
		return s, false, fmt.Sprintf("exit %d: %s %s", res.code, res.stdout, res.stderr)
	}
	return s, true, res.stdout
}

// verdict checks the fake's per-key counts and the dead letters: every key
// applied exactly once and nothing dead-lettered. It returns lost and
// duplicated keys for the log.
func (r *crashRig) verdict(t *testing.T) (lost, dup int, st fakeStats) {
	t.Helper()
	st = r.stats(t)
	var byKey map[string]int
	getJSON(t, r.fake+"/_fake/keys", &byKey)
	c := trutotest.CountEffects(byKey, r.sent)
	lost, dup = c.Lost, c.Duplicated
	if lost != 0 || dup != 0 || st.DuplicateEffects != 0 || st.Effects != len(r.keys) || st.KeyConflicts != 0 || st.Unkeyed != 0 {
		t.Errorf("lost %d, duplicated %d, stats %+v: want all %d updates applied exactly once", lost, dup, st, len(r.keys))
	}
	res := runCmd(t, r.env, "", "enqueue", "dlq", "list")
	if res.code != 0 || strings.TrimSpace(res.stdout) != "" {
		t.Errorf("dlq list: exit %d, stdout %q, stderr %q: want no dead letters", res.code, tail(res.stdout, 2000), res.stderr)
	}
	testrig.AssertNoSecretInRedis(t, r.rdb, token)
	return lost, dup, st
}

// budgetSpent reads every key's status from the ledger and returns how many
// updates are not completed and how many spent retry budget, each with an
// example, for a test to judge. It reads the way `enqueue status KEY` does
// (tasks.Operator.Find, the default queue), in this process: one command per key
// would be thousands of process starts. The command itself is run for the
// first, middle and last keys, and must say the same of them.
func (r *crashRig) budgetSpent(t *testing.T) (notCompleted, spent int, example string) {
	t.Helper()
	ctx := context.Background()
	store := tasks.NewStore(r.rdb)
	ledger := make(map[string]tasks.Status, len(r.keys))
	for _, k := range r.keys {
		s, err := store.Operator().Find(ctx, tasks.Lookup{Ref: k}, []string{tasks.DefaultQueue})
		ledger[k] = s
		desc, _ := json.Marshal(s)
		switch {
		case err != nil || s.State != tasks.StatusCompleted:
			notCompleted++
			if example == "" {
				example = fmt.Sprintf("%s: %s (%v)", k, desc, err)
			}
		case s.Spent != 0:
			spent++
			if example == "" {
				example = fmt.Sprintf("%s: %s", k, desc)
			}
		}
	}
	for _, k := range []string{r.keys[0], r.keys[len(r.keys)/2], r.keys[len(r.keys)-1]} {
		s, desc, err := r.status(k)
		if want := ledger[k]; err != nil || s.TaskID != want.TaskID || s.State != want.State || s.Spent != want.Spent {
			t.Errorf("enqueue status %s: %s (%v); the ledger read in the test says %s, retry_budget_spent %d", k, tail(desc, 1500), err, want.State, want.Spent)
		}
	}
	return notCompleted, spent, example
}

// status runs `enqueue status KEY`; unlike runCmd it never stops the test.
// desc is the command's output, for messages.
func (r *crashRig) status(key string) (s tasks.Status, desc string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "enqueue"), "status", key)
	cmd.Env = append(os.Environ(), r.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return s, out.String() + errb.String(), fmt.Errorf("enqueue status %s: %w", key, err)
	}
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		return s, out.String(), fmt.Errorf("enqueue status %s: decode: %w", key, err)
	}
	return s, out.String(), nil
}

// checkLedger fails the test unless every update is completed with no retry
// budget spent.
func (r *crashRig) checkLedger(t *testing.T, why string) {
	t.Helper()
	notCompleted, spent, example := r.budgetSpent(t)
	if notCompleted != 0 || spent != 0 {
		t.Errorf("ledger: %d updates not completed, %d spent retry budget (%s); want all %d completed with retry_budget_spent 0; e.g. %s",
			notCompleted, spent, why, len(r.keys), tail(example, 1500))
	}
}

// readyz returns the status code and body of the worker's /readyz (0 when
// the endpoint does not answer).
func readyz(admin string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(b.String())
}

// cpuTime is a process's user plus system CPU time from /proc/PID/stat.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("read CPU time of process %d: %v", pid, err)
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted from the last ')'. utime and stime are fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:]) // f[0] is field 3
	if i < 0 || len(f) < 13 {
		t.Fatalf("/proc/%d/stat: unexpected format %q", pid, s)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	// /proc reports clock ticks of USER_HZ, which Linux fixes at 100 for userspace.
	const userHZ = 100
	return time.Duration(utime+stime) * time.Second / userHZ
}

// exited waits up to within for a signalled process to exit and returns
// whether it did and its Wait error, leaving that for start's cleanup too.
func exited(p *proc, within time.Duration) (bool, error) {
	select {
	case err := <-p.done:
		p.done <- err // start's cleanup waits on it as well
		return true, err
	case <-time.After(within):
		return false, nil
	}
}

// TestWorkerKilled SIGKILLs one of two workers mid-batch: the killed
// worker's updates go again once their admission leases run out and the
// survivor's reaper (every 2 s) puts them back, the idempotency key makes
// the re-sends safe, and the crash spends no update's retry budget.
//
// The workers run with --lease 3s, not the default 10 s: the lease's length
// is a setting, and what is proven (held updates go again once it runs out,
// only by the reaper, each applied once) does not depend on it; renewing
// every second under a shorter lease asks more of the survivor, not less.
// TestLoadConfigDefaults checks the default itself.
func TestWorkerKilled(t *testing.T) {
	t.Parallel()
	const n, concurrency = 1500, 20
	const lease = 3 * time.Second
	r := newCrashRig(t, n, "20ms", "20ms")
	r.enqueue(t)
	began := time.Now()
	// No rate limits in the workers either: each keeps its 20 slots busy, so
	// the killed one holds updates in flight and admitted.
	flags := []string{"--account-rate", "0", "--token-rate", "0", "--lease", lease.String()}
	victim, _ := r.startWorker(t, flags...)
	survivor, _ := r.startWorker(t, flags...)

	waitFor(t, "300 effects before the kill", 2*time.Minute, func() (bool, string) {
		st := r.stats(t)
		return st.Effects >= 300, fmt.Sprintf("%+v", st)
	})
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	if ok, _ := exited(victim, 10*time.Second); !ok {
		t.Fatal("the SIGKILLed worker did not exit within 10s")
	}
	atKill := r.stats(t)

	// Lease (3 s) plus reap (every 2 s): about 5 s before the last of the
	// killed worker's updates goes again. The deadline leaves room for a
	// loaded machine; the time taken is logged, not judged.
	st := r.waitDone(t, time.Minute)
	done := time.Now()
	reaped, firstReap := reapedAfter(survivor.stderr.String(), killedAt)
	lost, dup, st := r.verdict(t)
	t.Logf("worker killed at %d effects (%d requests); fake: %d requests, %d effects, %d replays (requests for an already-applied key), by status %v; lost %d, duplicate effects %d (stats %d); finished %s after start, %s after the kill; the survivor put %d updates back, first %s after the kill",
		atKill.Effects, atKill.Requests, st.Requests, st.Effects, st.Replays, st.ByStatus, lost, dup, st.DuplicateEffects,
		done.Sub(began).Round(100*time.Millisecond), done.Sub(killedAt).Round(100*time.Millisecond),
		reaped, firstReap.Round(100*time.Millisecond))
	if reaped == 0 {
		t.Errorf("the survivor put no update back after the kill: the killed worker held none, and the test proved less than it claims")
	}
	// Only requests that were in flight in the killed worker can be re-sent
	// for an update already applied.
	if st.Replays > concurrency {
		t.Errorf("%d replays: more re-sends of applied updates than the killed worker had in flight (%d)", st.Replays, concurrency)
	}
	r.checkLedger(t, "no upstream faults: a crash must not spend budget")
}

// reapedAfter sums the updates a worker's log says it put back after their
// lease ran out, and how long after since the first such line came.
func reapedAfter(logs string, since time.Time) (n int, first time.Duration) {
	for _, l := range strings.Split(logs, "\n") {
		var m struct {
			Time    time.Time
			Msg     string
			Updates int
		}
		if json.Unmarshal([]byte(l), &m) != nil || m.Msg != "updates whose lease ran out go again" || m.Time.Before(since) {
			continue
		}
		if n == 0 {
			first = m.Time.Sub(since)
		}
		n += m.Updates
	}
	return n, first
}

// TestRedisRestart kills redis-server under a running worker, holds it down
// for a few seconds and restarts it on the same port and directory: the
// worker must say so in its log and in /readyz, not burn CPU while it waits,
// and finish every update exactly once when Redis is back.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	const n = 1500
	const down = 3 * time.Second
	r := newCrashRig(t, n, "20ms", "20ms")
	r.enqueue(t)
	began := time.Now()
	// No rate limits: the worker keeps its 20 slots busy, so Redis dies
	// under updates in flight and admitted, and the 1,500 take seconds,
	// not the minute the default limits would spread them over.
	w, admin := r.startWorker(t, "--account-rate", "0", "--token-rate", "0")
	pid := w.cmd.Process.Pid

	waitFor(t, "300 effects before the Redis kill", 2*time.Minute, func() (bool, string) {
		st := r.stats(t)
		return st.Effects >= 300, fmt.Sprintf("%+v", st)
	})
	cpuUp, wallUp := cpuTime(t, pid), time.Since(began)
	killedAt := time.Now()
	r.rds.Kill()
	atKill := r.stats(t)
	waitFor(t, "/readyz to answer 503 with Redis down", 15*time.Second, func() (bool, string) {
		code, body := readyz(admin)
		return code == http.StatusServiceUnavailable, fmt.Sprintf("%d %s", code, body)
	})
	notReadyAfter := time.Since(killedAt)
	// The outage's length is the fault being injected, not a wait for a condition.
	<-time.After(down - time.Since(killedAt))
	cpuDown, downWall := cpuTime(t, pid)-cpuUp, time.Since(killedAt)
	r.rds.Restart()
	restartedAt := time.Now()
	waitFor(t, "/readyz back to 200 by itself", 30*time.Second, func() (bool, string) {
		code, body := readyz(admin)
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
	readyAgain := time.Since(restartedAt)

	st := r.waitDone(t, 3*time.Minute)
	done := time.Now()
	lost, dup, st := r.verdict(t)
	upRate := cpuUp.Seconds() / wallUp.Seconds()
	downRate := cpuDown.Seconds() / downWall.Seconds()
	t.Logf("Redis killed at %d effects (%d requests), down %s; /readyz 503 after %s, 200 again %s after the restart; worker CPU %.3f s/s while working, %.3f s/s while Redis was down (%.2f s CPU in %.2f s)",
		atKill.Effects, atKill.Requests, restartedAt.Sub(killedAt).Round(10*time.Millisecond), notReadyAfter.Round(10*time.Millisecond),
		readyAgain.Round(10*time.Millisecond), upRate, downRate, cpuDown.Seconds(), downWall.Seconds())
	t.Logf("fake: %d requests, %d effects, %d replays, by status %v; lost %d, duplicate effects %d (stats %d); finished %s after start, %s after the restart",
		st.Requests, st.Effects, st.Replays, st.ByStatus, lost, dup, st.DuplicateEffects,
		done.Sub(began).Round(100*time.Millisecond), done.Sub(restartedAt).Round(100*time.Millisecond))

	// asynq's fetch loop does not pause between failed dequeues (ASYNQ-NOTES):
	// a worker waiting for Redis must not spin a core.
	if downRate > 0.5 {
		t.Errorf("the worker used %.2f CPU s per wall second while Redis was down (%.2f while working): it spins instead of backing off", downRate, upRate)
	}
	logs := w.stderr.String()
	if !strings.Contains(logs, `"msg":"Redis unreachable`) {
		// The worker's own line comes from asynq's HealthCheckFunc, which
		// internal/worker polls every 5 s: a shorter outage is logged by chance.
		t.Errorf("DEFECT: the worker's log has no line saying Redis is unreachable after a %s outage (internal/worker logs it only from asynq's health check, every 5 s); what it logged, by message:\n%s",
			restartedAt.Sub(killedAt).Round(10*time.Millisecond), msgSummary(logs))
	}
	// README: "Logs are JSON on stderr", so log shippers can parse every line.
	if n := notJSON(logs); n > 0 {
		t.Errorf("DEFECT: %d of the worker's stderr lines are not JSON (go-redis's own logger, not routed through slog?); by message:\n%s", n, msgSummary(logs))
	}
	r.checkLedger(t, "no upstream faults: a Redis outage must not spend budget")
}

// TestSIGTERMHandsBack stops a worker whose in-flight requests outlast its
// shutdown timeout: it must exit 0 in time, hand those updates back, and a new
// worker must finish them all exactly once.
func TestSIGTERMHandsBack(t *testing.T) {
	t.Parallel()
	const n = 200
	const shutdownTimeout = 2 * time.Second
	r := newCrashRig(t, n, "3s", "20ms")
	r.enqueue(t)
	began := time.Now()
	w, _ := r.startWorker(t, "--shutdown-timeout", shutdownTimeout.String())

	// SIGTERM while 20 updates run, each waiting 3 s for its answer. (Waiting
	// for 20 answered requests, as this did, could signal between the first
	// batch and the second with nothing in flight: on a loaded machine it did,
	// and the worker had nothing to hand back.)
	waitFor(t, "20 updates running before SIGTERM", time.Minute, func() (bool, string) {
		s, ok, desc := r.enqueueStats(t)
		return ok && s.Admission.Running >= 20, desc
	})
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	ok, err := exited(w, shutdownTimeout+5*time.Second)
	if !ok {
		t.Fatalf("the worker did not exit within %s of SIGTERM (shutdown timeout %s + 5s)", shutdownTimeout+5*time.Second, shutdownTimeout)
	}
	exitAfter := time.Since(termAt)
	if err != nil {
		t.Errorf("worker exit after SIGTERM: %v; want exit code 0", err)
	}
	atExit := r.stats(t)
	handedBack := strings.Count(w.stderr.String(), "Quitting worker")

	// The next worker takes all that is left at once: the first one's drain
	// is what is judged, not how fast 3-second requests go 20 at a time.
	r.startWorker(t, "--shutdown-timeout", shutdownTimeout.String(), "--concurrency", "200", "--max-admitted", "200")
	st := r.waitDone(t, 3*time.Minute)
	done := time.Now()
	lost, dup, st := r.verdict(t)
	t.Logf("SIGTERM with 20 updates running; at its exit the fake had answered %d requests (%d effects); exited in %s; %d tasks handed back; fake: %d requests, %d effects, %d replays, by status %v; lost %d, duplicate effects %d (stats %d); finished %s after start",
		atExit.Requests, atExit.Effects, exitAfter.Round(10*time.Millisecond), handedBack, st.Requests, st.Effects, st.Replays, st.ByStatus,
		lost, dup, st.DuplicateEffects, done.Sub(began).Round(100*time.Millisecond))
	if handedBack == 0 {
		t.Errorf("no task was handed back at shutdown: the test proved less than it claims")
	}
	r.checkLedger(t, "no upstream faults: a drain must not spend budget")
}

// taskIDs matches task ids, so that log messages differing only in the task
// count as one.
var taskIDs = regexp.MustCompile(`u_[0-9a-f]{32}`)

// digits matches runs of digits (times, ports), so that plain-text log lines
// differing only in them count as one.
var digits = regexp.MustCompile(`[0-9]+`)

// msgSummary counts a JSON log's lines by message (task ids blanked, at most
// 120 bytes), most frequent first.
func msgSummary(logs string) string {
	counts := map[string]int{}
	for _, l := range strings.Split(logs, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var m struct{ Msg string }
		if json.Unmarshal([]byte(l), &m) != nil {
			m.Msg = "NOT JSON: " + digits.ReplaceAllString(l, "N")
		}
		msg := taskIDs.ReplaceAllString(m.Msg, "u_*")
		counts[msg[:min(len(msg), 120)]]++
	}
	msgs := slices.SortedFunc(maps.Keys(counts), func(a, b string) int { return cmp.Compare(counts[b], counts[a]) })
	var out strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&out, "%6d  %s\n", counts[m], m)
	}
	return out.String()
}

// notJSON counts the non-empty lines of logs that are not JSON objects.
func notJSON(logs string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		var m map[string]any
		if strings.TrimSpace(l) != "" && json.Unmarshal([]byte(l), &m) != nil {
			n++
		}
	}
	return n
}
