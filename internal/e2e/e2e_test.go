package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

const token = "tok_e2e_7d1f0a9b2c"

var bin string // directory holding the built binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "orgsync-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	for _, cmd := range []string{"worker", "enqueue", "fake-truto"} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "github.com/orgsync/orgsync/cmd/"+cmd)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", cmd, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running binary whose stderr is kept.
type proc struct {
	cmd    *exec.Cmd
	stderr *testrig.SyncBuffer
	done   chan error
}

func start(t *testing.T, env []string, name string, args ...string) (*proc, io.Reader) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, stderr: &testrig.SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, tail(p.stderr.String(), 4000))
		}
	})
	return p, stdout
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// result of running a command to completion.
type result struct {
	code           int
	stdout, stderr string
}

func runCmd(t *testing.T, env []string, stdin string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s %v: %v", name, args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// startFake starts fake-truto on a free loopback port with the token in
// tokenFile and args, and returns its base URL (the address it prints).
func startFake(t *testing.T, tokenFile string, args ...string) string {
	t.Helper()
	_, out := start(t, nil, "fake-truto", append([]string{"--addr", "127.0.0.1:0", "--token-file", tokenFile}, args...)...)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("fake-truto did not print its address: %v", err)
	}
	var addr struct{ Addr string }
	if err := json.Unmarshal([]byte(line), &addr); err != nil || addr.Addr == "" {
		t.Fatalf("fake-truto address line %q: %v", line, err)
	}
	return addr.Addr
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: decode: %v", url, err)
	}
}

func send(t *testing.T, method, url, body string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %d", method, url, resp.StatusCode)
	}
}

// waitFor is testrig.WaitFor for the conditions here, many of which start
// a process or ask the fake over HTTP: a tenth of a second apart.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	testrig.WaitEvery(t, 100*time.Millisecond, what, timeout, cond)
}

type fakeStats struct {
	Requests         int         `json:"requests"`
	ByStatus         map[int]int `json:"by_status"`
	Effects          int         `json:"effects"`
	DuplicateEffects int         `json:"duplicate_effects"`
	Replays          int         `json:"replays"`
	KeyConflicts     int         `json:"key_conflicts"`
	RateLimited      int         `json:"rate_limited"`
	Unkeyed          int         `json:"unkeyed"`
}

// TestEndToEnd runs the binaries as an operator would: bulk-enqueue a file
// with some bad lines, run the worker through transient upstream faults,
// inspect and replay dead letters, re-run the file, stop the worker with
// SIGTERM, and check every update's outcome against the fake's counts.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := testrig.TokenFile(t, token)
	rds := redistest.Start(t, redistest.WithAOF())

	const n, accounts = 1200, 12
	bad := []string{"org-000007", "org-000500", "org-001111"}
	fakeArgs := []string{"--account-limit", "0", "--token-limit", "0", "--latency", "2ms", "--error-rate", "500=0.04", "--error-rate", "503=0.03", "--after-apply-rate", "502=0.03", "--after-apply-rate", "504=0.02"}
	for _, id := range bad {
		fakeArgs = append(fakeArgs, "--org-status", id+"=422")
	}
	fake := startFake(t, tokenFile, fakeArgs...)

	// The input: n valid lines (one organization each, numbered), two bad ones.
	var file bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&file, `{"id":"org-%06d","integrated_account_id":"acct-%02d","body":{"seq":%d,"remote_data":{"tier":"gold"}}}`+"\n", i, i%accounts, i)
		if i == 99 {
			file.WriteString(`{"id":"x","integrated_account_id":"acct-00","body":"not an object"}` + "\n")
		}
		if i == 199 {
			file.WriteString("{broken json\n")
		}
	}
	input := filepath.Join(dir, "updates.ndjson")
	if err := os.WriteFile(input, file.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"REDIS_URL=" + rds.URL(), "TRUTO_API_TOKEN_FILE=" + tokenFile, "TRUTO_BASE_URL=" + fake, "TRUTO_API_TOKEN="}

	// Enqueue: the bad lines are named by number, the rest go.
	r := runCmd(t, env, "", "enqueue", "bulk", input, "--run", "e2e")
	var sum struct{ Read, Enqueued, Duplicates, Invalid, Failed int }
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil {
		t.Fatalf("bulk stdout %q: %v", r.stdout, err)
	}
	if r.code != 1 || sum.Enqueued != n || sum.Invalid != 2 || sum.Failed != 0 {
		t.Fatalf("bulk: exit %d, %+v, stderr %q; want exit 1, %d enqueued, 2 invalid", r.code, sum, r.stderr, n)
	}
	for _, want := range []string{"line 101: body: must be a JSON object", "line 202:"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("bulk stderr lacks %q:\n%s", want, r.stderr)
		}
	}

	// Before any worker runs, the updates wait in admission, each account
	// scheduled for its turn, and status says so.
	key := tasks.RunKey("e2e", 1, bytes.SplitN(file.Bytes(), []byte("\n"), 2)[0])
	r = runCmd(t, env, "", "enqueue", "status", key)
	var status tasks.Status
	if err := json.Unmarshal([]byte(r.stdout), &status); err != nil || status.State != tasks.StatusWaiting || !strings.Contains(status.Why, "its account's turn") {
		t.Errorf("status %s before the worker: exit %d, %q: want waiting for its account's turn", key, r.code, r.stdout)
	}
	r = runCmd(t, env, "", "enqueue", "stats")
	var stats tasks.Stats
	if err := json.Unmarshal([]byte(r.stdout), &stats); err != nil || stats.Admission.Scheduled != accounts || len(stats.Queues) != 0 {
		t.Errorf("stats before the worker: exit %d, %q: want %d accounts scheduled in admission and nothing in asynq", r.code, r.stdout, accounts)
	}

	// Someone follows the run to its end before any worker has started.
	follower, followOut := start(t, env, "enqueue", "runs", "status", "e2e", "--wait", "--timeout", "4m")
	followed := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(followOut); followed <- b }()

	// The worker. Its rate limits are ten times the defaults: still spacing
	// every account's and the token's requests, but the 1,200 updates take
	// seconds instead of the half minute the default 50/s token limit takes.
	admin := freeAddr(t)
	worker, _ := start(t, env, "worker", "--admin-addr", admin, "--concurrency", "40",
		"--retry-base", "200ms", "--retry-cap", "2s", "--poll-interval", "100ms", "--retry-poll-interval", "200ms",
		"--shutdown-timeout", "5s", "--account-rate", "500/10s", "--token-rate", "5000/10s")
	waitFor(t, "the worker to be ready", 30*time.Second, func() (bool, string) {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	var st fakeStats
	waitFor(t, "every good update applied", 3*time.Minute, func() (bool, string) {
		getJSON(t, fake+"/_fake/stats", &st)
		return st.Effects == n-len(bad), fmt.Sprintf("%+v", st)
	})

	// Dead letters: exactly the bad organizations, with Truto's answer kept.
	waitFor(t, "the bad updates dead-lettered", time.Minute, func() (bool, string) {
		r = runCmd(t, env, "", "enqueue", "dlq", "list")
		return strings.Count(r.stdout, "\n") == len(bad), r.stdout
	})
	for _, id := range bad {
		if !strings.Contains(r.stdout, `"id":"`+id+`"`) || !strings.Contains(r.stdout, `"status_code":422`) {
			t.Errorf("dlq list lacks %s with status 422:\n%s", id, r.stdout)
		}
	}
	// The follower saw the run end: every update completed or dead, exit 1
	// for the dead ones, dead letters by status and class.
	var runSt tasks.RunStatus
	select {
	case out := <-followed:
		err := <-follower.done
		follower.done <- err // for the cleanup
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if jerr := json.Unmarshal(out, &runSt); jerr != nil || code != 1 || !runSt.Done || runSt.Total != int64(n) ||
			runSt.Completed != int64(n-len(bad)) || runSt.Dead != int64(len(bad)) || runSt.DeadByStatus["422"] != len(bad) || runSt.DeadByClass["permanent"] != len(bad) {
			t.Errorf("runs status --wait: exit %d (%v), %q; want exit 1, done: %d completed, %d dead with 422", code, err, out, n-len(bad), len(bad))
		}
	case <-time.After(time.Minute):
		t.Fatal("runs status --wait did not return within a minute of the run ending")
	}
	// Its results, line by line: every line of the file that was valid, in
	// order; the dead ones with Truto's answer.
	r = runCmd(t, env, "", "enqueue", "runs", "results", "e2e")
	resLines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(resLines) != n {
		t.Fatalf("runs results: exit %d, %d lines; want %d", r.code, len(resLines), n)
	}
	prev := int64(0)
	for _, l := range resLines {
		var res tasks.RunResult
		if err := json.Unmarshal([]byte(l), &res); err != nil || res.Line <= prev {
			t.Fatalf("runs results line %q: %v; want NDJSON in line order", l, err)
		}
		prev = res.Line
		if res.State == tasks.StatusCompleted && (res.StatusCode != 200 || len(res.Response) == 0) {
			t.Errorf("completed line %d without its stored response: %s", res.Line, l)
		}
	}
	r = runCmd(t, env, "", "enqueue", "runs", "results", "e2e", "--state", "dead")
	if strings.Count(r.stdout, "\n") != len(bad) || strings.Count(r.stdout, `"status_code":422`) != len(bad) || !strings.Contains(r.stdout, `"class":"permanent"`) {
		t.Errorf("runs results --state dead: %q; want the %d dead lines with 422 and their class", r.stdout, len(bad))
	}

	// status of a completed update shows its stored response.
	r = runCmd(t, env, "", "enqueue", "status", key)
	status = tasks.Status{}
	if err := json.Unmarshal([]byte(r.stdout), &status); err != nil || status.State != tasks.StatusCompleted || status.Result == nil || status.Result.StatusCode != 200 {
		t.Errorf("status %s: exit %d, %q: want completed with a 200 result", key, r.code, r.stdout)
	}

	// Fix the upstream, replay, and everything is applied.
	send(t, http.MethodPatch, fake+"/_fake/faults", `{"org_status":{}}`)
	r = runCmd(t, env, "", "enqueue", "dlq", "replay", "--all")
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf(`"replayed":%d`, len(bad))) {
		t.Fatalf("replay: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	waitFor(t, "the replayed updates applied", time.Minute, func() (bool, string) {
		getJSON(t, fake+"/_fake/stats", &st)
		return st.Effects == n, fmt.Sprintf("%+v", st)
	})
	// In the run, the replayed lines went from dead to waiting to completed.
	r = runCmd(t, env, "", "enqueue", "runs", "status", "e2e", "--wait", "--timeout", "1m")
	if err := json.Unmarshal([]byte(r.stdout), &runSt); err != nil || r.code != 0 || runSt.Completed != int64(n) || runSt.Dead != 0 || !runSt.Done {
		t.Errorf("runs status after the replay: exit %d, %q; want exit 0, all %d completed", r.code, r.stdout, n)
	}
	// The outcome events: every update's end at least once, the dead ones,
	// and the run done (twice: before and after the replay).
	r = runCmd(t, env, "", "enqueue", "events", "--run", "e2e")
	completed := map[string]bool{}
	var deadEvents, doneEvents int
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev tasks.OutcomeEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("events line %q: %v", l, err)
		}
		switch ev.Type {
		case tasks.EventCompleted:
			completed[ev.TaskID] = true
		case tasks.EventDead:
			deadEvents++
		case tasks.EventRunDone:
			doneEvents++
		}
	}
	if r.code != 0 || len(completed) != n || deadEvents != len(bad) || doneEvents != 2 {
		t.Errorf("events --run e2e: exit %d, %d updates completed, %d dead, %d run_done; want %d, %d, 2", r.code, len(completed), deadEvents, doneEvents, n, len(bad))
	}

	// Re-running the same file under the same run name enqueues nothing.
	r = runCmd(t, env, "", "enqueue", "bulk", input, "--run", "e2e")
	if err := json.Unmarshal([]byte(strings.SplitN(r.stdout, "\n", 2)[0]), &sum); err != nil || sum.Enqueued != 0 || sum.Duplicates != n {
		t.Errorf("bulk re-run: %q: want 0 enqueued, %d duplicates", r.stdout, n)
	}
	r = runCmd(t, env, "", "enqueue", "runs", "status", "e2e")
	if err := json.Unmarshal([]byte(r.stdout), &runSt); err != nil || runSt.Total != int64(n) || runSt.Completed != int64(n) || !runSt.Done {
		t.Errorf("runs status after the re-run: %q; want the same %d lines, all completed", r.stdout, n)
	}

	// SIGTERM drains and exits 0.
	if err := worker.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-worker.done:
		worker.done <- err // for the cleanup
		if err != nil {
			t.Errorf("worker exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not stop within 30s of SIGTERM")
	}

	// The fake's verdict: nothing lost, nothing twice, nothing out of order.
	getJSON(t, fake+"/_fake/stats", &st)
	var byKey map[string]int
	getJSON(t, fake+"/_fake/keys", &byKey)
	var ooo struct {
		OutOfOrder int `json:"out_of_order"`
	}
	getJSON(t, fake+"/_fake/out-of-order?field=seq", &ooo)
	var keys []string
	lines := bytes.Split(bytes.TrimSpace(file.Bytes()), []byte("\n"))
	for i, l := range lines {
		if u, err := tasks.ParseUpdate(l); err == nil {
			keys = append(keys, tasks.UpstreamKey(u.IntegratedAccountID, tasks.RunKey("e2e", i+1, l)))
		}
	}
	c := trutotest.CountEffects(byKey, keys)
	lost, dup := c.Lost, c.Duplicated
	t.Logf("fake: %d requests, %d effects, %d idempotent replays, by status %v", st.Requests, st.Effects, st.Replays, st.ByStatus)
	if lost != 0 || dup != 0 || st.DuplicateEffects != 0 || st.Effects != n || ooo.OutOfOrder != 0 || st.Unkeyed != 0 || st.KeyConflicts != 0 {
		t.Errorf("lost %d, duplicated %d, out of order %d, stats %+v; want all %d applied exactly once", lost, dup, ooo.OutOfOrder, st, n)
	}
	if st.ByStatus[500]+st.ByStatus[502]+st.ByStatus[503]+st.ByStatus[504] == 0 {
		t.Error("no transient faults were injected: the test proved less than it claims")
	}

	// The token is in no log line, no output, and nowhere in Redis.
	if strings.Contains(worker.stderr.String(), token) {
		t.Error("the API token appears in the worker's logs")
	}
	if !strings.Contains(worker.stderr.String(), `"msg":"worker stopped"`) {
		t.Errorf("worker logs lack the drain message:\n%s", tail(worker.stderr.String(), 2000))
	}
	testrig.AssertNoSecretInRedis(t, rds.Client(), token)
}
