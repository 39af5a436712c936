package tasks

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// A run is a named set of updates enqueued together, usually one bulk file:
// which update each line became, and how many of them have ended. Producers
// add lines (InRun, AtLine); the update's ledger record names the runs it is
// in, so the worker that ends it (completed or dead) counts it in each; a
// replay counts it as waiting again and a purge as purged. A run is done once
// it is sealed (every line is in) and every update in it has ended. Its keys
// live as long as results (the result TTL), renewed by every change.

//go:embed run.lua
var runSource string

var runScript = redis.NewScript(runSource)

// MaxRunNameBytes bounds a run's name.
const MaxRunNameBytes = 256

// runFieldPrefix marks the ledger record's fields naming the runs of an update.
const runFieldPrefix = "run:"

// End states of an update in a run, as run.lua stores them.
const (
	runWaiting   = ""
	runCompleted = "c"
	runDead      = "d"
	runPurged    = "p"
)

// Runs keeps the runs (Store.Runs): what each line of a run became, its counts,
// and when it is done.
type Runs struct{ *base }

// ValidateRunName checks a run's name: 1 to MaxRunNameBytes bytes of UTF-8
// text without control characters.
func ValidateRunName(name string) error {
	switch {
	case name == "":
		return &ValidationError{Field: "run", Reason: "is empty"}
	case len(name) > MaxRunNameBytes:
		return &ValidationError{Field: "run", Reason: fmt.Sprintf("is %d bytes; at most %d allowed", len(name), MaxRunNameBytes)}
	case !utf8.ValidString(name):
		return &ValidationError{Field: "run", Reason: "is not valid UTF-8"}
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return &ValidationError{Field: "run", Reason: "has a control character"}
		}
	}
	return nil
}

// runKeys are the run's meta, lines and ids keys. The name is hashed into the
// hash tag, so any name makes a well-formed key in one slot.
func (s *Runs) runKeys(name string) []string {
	sum := sha256.Sum256([]byte(name))
	base := s.prefix + ":{run:" + hex.EncodeToString(sum[:16]) + "}:"
	return []string{base + "meta", base + "lines", base + "ids"}
}

// runIndex lists the runs by name, scored by when each started.
func (s *Runs) runIndex() string { return s.prefix + ":{runs}:index" }

func (s *Runs) runCall(ctx context.Context, name, op string, args ...any) *redis.Cmd {
	return runScript.Run(ctx, s.rdb, s.runKeys(name), s.runArgs(op, args)...)
}

// runCallIn queues a run.lua call in pipe, by its SHA (see pipelined).
func (s *Runs) runCallIn(ctx context.Context, pipe redis.Pipeliner, name, op string, args ...any) *redis.Cmd {
	return runScript.EvalSha(ctx, pipe, s.runKeys(name), s.runArgs(op, args)...)
}

func (s *Runs) runArgs(op string, args []any) []any {
	return append([]any{op, s.now().UnixMilli(), s.ttl.Milliseconds()}, args...)
}

// runEntry is one line of a run on its way in.
type runEntry struct {
	line   int64 // 0: the next free line
	taskID string
	key    string
}

// runPlace is where an entry landed: its line, and its state in the run
// before this add ("new" when it was not in the run).
type runPlace struct {
	line  int64
	prior string
}

// addToRun records entries in run name (creating it), and the run in each
// entry's ledger record, so that whoever ends the update counts it in the run.
func (s *Runs) addToRun(ctx context.Context, name string, entries []runEntry) ([]runPlace, error) {
	out, err := s.addRunLines(ctx, name, entries)
	if err != nil {
		return nil, err
	}
	pipe := s.rdb.Pipeline()
	s.nameRunIn(ctx, pipe, name, entries)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("add to run %q: %w", name, err)
	}
	return out, nil
}

// addRunLines records entries in run name (creating it), in one script call.
// The caller then names the run in each entry's ledger record (nameRunIn),
// after this call and before it reads the update's state.
func (s *Runs) addRunLines(ctx context.Context, name string, entries []runEntry) ([]runPlace, error) {
	args := []any{name}
	for _, e := range entries {
		args = append(args, e.line, e.taskID, e.key)
	}
	res, err := s.runCall(ctx, name, "add", args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("add to run %q: %w", name, err)
	}
	out := make([]runPlace, 0, len(entries))
	for i := 0; i+1 < len(res); i += 2 {
		line, _ := res[i].(int64)
		prior, _ := res[i+1].(string)
		out = append(out, runPlace{line: line, prior: prior})
	}
	return out, nil
}

// nameRunIn queues in pipe the run's place in the run index and the run's
// name in each entry's ledger record.
func (s *Runs) nameRunIn(ctx context.Context, pipe redis.Pipeliner, name string, entries []runEntry) {
	pipe.ZAddNX(ctx, s.runIndex(), redis.Z{Score: float64(s.now().UnixMilli()), Member: name})
	// Renewed here and when a run finishes (announceRun); List drops the
	// names of runs that expired.
	pipe.PExpire(ctx, s.runIndex(), s.ttl)
	for _, e := range entries {
		rec := s.ledger.recKey(e.taskID)
		pipe.HSet(ctx, rec, runFieldPrefix+name, "1")
		// An update can wait up to its wall-clock budget before its first
		// attempt renews the record.
		pipe.PExpire(ctx, rec, s.ttl+DefaultMaxAge)
	}
}

// setRunState records the update's state in run name and reports whether the
// run has just become done (and its event is still to be written).
func (s *Runs) setRunState(ctx context.Context, name, taskID, state string) (bool, error) {
	res, err := s.runCall(ctx, name, "set", taskID, state).Int64Slice()
	if err != nil {
		return false, fmt.Errorf("run %q: record %s: %w", name, taskID, err)
	}
	return len(res) == 2 && res[1] == 1, nil
}

// setRunStates records several updates' states in run name in one call,
// and announces the run if they made it done.
func (s *Runs) setRunStates(ctx context.Context, name string, states map[string]string) error {
	if len(states) == 0 {
		return nil
	}
	args := make([]any, 0, 2*len(states))
	for id, st := range states {
		args = append(args, id, st)
	}
	res, err := s.runCall(ctx, name, "setmany", args...).Int64Slice()
	if err != nil {
		return fmt.Errorf("run %q: record %d updates: %w", name, len(states), err)
	}
	if len(res) == 2 && res[1] == 1 {
		return s.announceRun(ctx, name)
	}
	return nil
}

// setInRuns records the update's state in each of runs, and announces those
// it made done.
func (s *Runs) setInRuns(ctx context.Context, taskID string, runs []string, state string) error {
	var errs []error
	for _, name := range runs {
		done, err := s.setRunState(ctx, name, taskID, state)
		if err == nil && done {
			err = s.announceRun(ctx, name)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// announceClaim is how long a claim to write a run's run_done event holds
// before another reader takes it as its writer's crash.
const announceClaim = time.Minute

// announceRun writes a run's run_done event, then marks it written, unless
// another writer has claimed it (or it is out already).
func (s *Runs) announceRun(ctx context.Context, name string) error {
	claimed, err := s.runCall(ctx, name, "claim", announceClaim.Milliseconds()).Int64()
	if err != nil {
		return fmt.Errorf("run %q: claim its run_done event: %w", name, err)
	}
	if claimed == 0 {
		return nil
	}
	m, err := s.rdb.HGetAll(ctx, s.runKeys(name)[0]).Result()
	if err != nil {
		return fmt.Errorf("read run %q: %w", name, err)
	}
	st := runStatusOf(name, m)
	e := OutcomeEvent{Type: EventRunDone, At: s.now().UTC(), Run: name, Total: st.Total,
		Completed: st.Completed, Dead: st.Dead, Purged: st.Purged}
	if err := s.events.emit(ctx, e); err != nil {
		return err
	}
	_ = s.rdb.PExpire(ctx, s.runIndex(), s.ttl).Err() // listed as long as it is kept
	return s.runCall(ctx, name, "announced").Err()
}

// Seal says every line of run name is in: once every update in it has
// ended, the run is done. Adding a new line later opens it again. It returns
// ErrNotFound for an unknown run.
func (s *Runs) Seal(ctx context.Context, name string) error {
	res, err := s.runCall(ctx, name, "seal").Int64Slice()
	if err != nil {
		return fmt.Errorf("seal run %q: %w", name, err)
	}
	if len(res) < 2 || res[0] == 0 {
		return fmt.Errorf("run %q: %w", name, ErrNotFound)
	}
	if res[1] == 1 {
		return s.announceRun(ctx, name)
	}
	return nil
}

// RunStatus is where a run stands.
type RunStatus struct {
	Run       string    `json:"run"`
	Started   time.Time `json:"started"`
	Total     int64     `json:"total"`
	Completed int64     `json:"completed"`
	Dead      int64     `json:"dead"`
	Purged    int64     `json:"purged"`
	// Waiting is every update of the run not yet completed, dead or purged.
	Waiting int64 `json:"waiting"`
	// Sealed says every line is in (a bulk enqueue that stopped half-way
	// leaves the run open until it is run again).
	Sealed   bool      `json:"sealed"`
	Done     bool      `json:"done"`
	Finished time.Time `json:"finished,omitzero"`
	// DeadByStatus and DeadByClass count the run's dead letters (filled by
	// Runs.DeadLetters).
	DeadByStatus map[string]int `json:"dead_by_status,omitempty"`
	DeadByClass  map[string]int `json:"dead_by_class,omitempty"`
}

// Get returns run name's counts, or ErrNotFound.
func (s *Runs) Get(ctx context.Context, name string) (RunStatus, error) {
	m, err := s.rdb.HGetAll(ctx, s.runKeys(name)[0]).Result()
	if err != nil {
		return RunStatus{}, fmt.Errorf("read run %q: %w", name, err)
	}
	if len(m) == 0 {
		return RunStatus{}, fmt.Errorf("run %q: %w", name, ErrNotFound)
	}
	st := runStatusOf(name, m)
	if st.Done && m["announced"] != "1" {
		// Its run_done event was lost to a crash or a Redis error between the
		// last end and the event: whoever reads the run first writes it.
		_ = s.announceRun(ctx, name)
	}
	return st, nil
}

func runStatusOf(name string, m map[string]string) RunStatus {
	n := func(f string) int64 { v, _ := strconv.ParseInt(m[f], 10, 64); return v }
	st := RunStatus{Run: name, Started: msTime(m["started"]), Total: n("total"), Completed: n("completed"),
		Dead: n("dead"), Purged: n("purged"), Sealed: m["sealed"] == "1", Finished: msTime(m["finished"])}
	st.Waiting = max(st.Total-st.Completed-st.Dead-st.Purged, 0)
	st.Done = st.Sealed && st.Total > 0 && st.Waiting == 0
	return st
}

func msTime(v string) time.Time {
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// DeadLetters fills st's dead letters by status and by class, reading the
// run's ids once (pages of runPage) and their dead letters.
func (s *Runs) DeadLetters(ctx context.Context, st *RunStatus) error {
	st.DeadByStatus, st.DeadByClass = map[string]int{}, map[string]int{}
	if st.Dead == 0 {
		return nil
	}
	ids := s.runKeys(st.Run)[2]
	var dead []string
	flush := func() error {
		if len(dead) == 0 {
			return nil
		}
		pipe := s.rdb.Pipeline()
		raws := make([]*redis.StringCmd, len(dead))
		for i, id := range dead {
			raws[i] = s.dead.getIn(ctx, pipe, id)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read the dead letters of run %q: %w", st.Run, err)
		}
		for _, raw := range raws {
			if d, ok := deadOf(raw); ok {
				st.DeadByStatus[strconv.Itoa(d.StatusCode)]++
				st.DeadByClass[string(d.Class)]++
			}
		}
		dead = dead[:0]
		return nil
	}
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, ids, cursor, "", runPage).Result()
		if err != nil {
			return fmt.Errorf("scan run %q: %w", st.Run, err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if strings.HasSuffix(kv[i+1], "|"+runDead) {
				dead = append(dead, kv[i])
			}
		}
		if len(dead) >= runPage {
			if err := flush(); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return flush()
		}
	}
}

// List lists the runs kept, oldest first. Runs whose keys have expired are
// dropped from the index on the way.
func (s *Runs) List(ctx context.Context) ([]RunStatus, error) {
	names, err := s.rdb.ZRange(ctx, s.runIndex(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	var out []RunStatus
	for start := 0; start < len(names); start += runPage {
		page := names[start:min(start+runPage, len(names))]
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(page))
		for i, n := range page {
			cmds[i] = pipe.HGetAll(ctx, s.runKeys(n)[0])
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("list runs: %w", err)
		}
		var gone []any
		for i, c := range cmds {
			if len(c.Val()) == 0 {
				gone = append(gone, page[i])
				continue
			}
			out = append(out, runStatusOf(page[i], c.Val()))
		}
		if len(gone) > 0 {
			_ = s.rdb.ZRem(ctx, s.runIndex(), gone...).Err()
		}
	}
	return out, nil
}

// runPage is how many lines one round trip of a run scan reads.
const runPage = 500

// RunResult is one line of a run and what became of its update.
type RunResult struct {
	Line           int64  `json:"line"`
	IdempotencyKey string `json:"idempotency_key"`
	TaskID         string `json:"task_id"`
	// State is completed, dead, purged, or where the update waits: waiting
	// (in admission), pending (admitted) or active (being sent).
	State      State `json:"state"`
	StatusCode int   `json:"status_code,omitempty"`
	// Response is Truto's unified response body of a completed update, as
	// JSON; ResponseText holds one that is not JSON, or was cut short.
	Response     json.RawMessage `json:"response,omitempty"`
	ResponseText string          `json:"response_text,omitempty"`
	Error        *RunError       `json:"error,omitempty"`
}

// RunError is why a dead update died.
type RunError struct {
	Class  Class  `json:"class"`
	Reason string `json:"reason"`
	// Body is Truto's error body: JSON as it came, or a JSON string.
	Body json.RawMessage `json:"body,omitempty"`
}

// ResultFilter selects lines of a run. Zero fields match everything.
type ResultFilter struct {
	State      State
	StatusCode int
}

func (f ResultFilter) match(r RunResult) bool {
	return (f.State == "" || f.State == r.State) && (f.StatusCode == 0 || f.StatusCode == r.StatusCode)
}

// EachResult calls fn for every line of run name that matches f, in line
// order, reading runPage lines per round trip: memory stays flat whatever the
// run's size. It returns ErrNotFound for an unknown run.
func (s *Runs) EachResult(ctx context.Context, name string, f ResultFilter, fn func(RunResult) error) error {
	keys := s.runKeys(name)
	meta, err := s.rdb.HMGet(ctx, keys[0], "next_line", "total").Result()
	if err != nil {
		return fmt.Errorf("read run %q: %w", name, err)
	}
	if meta[0] == nil {
		return fmt.Errorf("run %q: %w", name, ErrNotFound)
	}
	lastLine, _ := strconv.ParseInt(str(meta[0]), 10, 64)
	total, _ := strconv.ParseInt(str(meta[1]), 10, 64)
	pages := denseLines(lastLine)
	if lastLine > 2*total+runPage {
		// Sparse line numbers (a producer's own): read the ones in use, in
		// order, rather than every number up to the highest.
		if pages, err = s.sparseLines(ctx, keys[1]); err != nil {
			return fmt.Errorf("read run %q: %w", name, err)
		}
	}
	for fields := range pages {
		page, err := s.runResultPage(ctx, keys, fields)
		if err != nil {
			return fmt.Errorf("read run %q: %w", name, err)
		}
		for _, r := range page {
			if !f.match(r) {
				continue
			}
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// denseLines yields the line numbers 1..last, runPage at a time.
func denseLines(last int64) iter.Seq[[]string] {
	return func(yield func([]string) bool) {
		fields := make([]string, 0, runPage)
		for from := int64(1); from <= last; from += runPage {
			fields = fields[:0]
			for l := from; l < from+runPage && l <= last; l++ {
				fields = append(fields, strconv.FormatInt(l, 10))
			}
			if !yield(fields) {
				return
			}
		}
	}
}

// sparseLines yields the line numbers in use, in order, runPage at a time:
// eight bytes per line held while it runs.
func (s *Runs) sparseLines(ctx context.Context, lines string) (iter.Seq[[]string], error) {
	var nums []int64
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, lines, cursor, "", runPage).Result()
		if err != nil {
			return nil, err
		}
		for i := 0; i < len(kv); i += 2 {
			if n, err := strconv.ParseInt(kv[i], 10, 64); err == nil {
				nums = append(nums, n)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	slices.Sort(nums)
	nums = slices.Compact(nums)
	return func(yield func([]string) bool) {
		fields := make([]string, 0, runPage)
		for from := 0; from < len(nums); from += runPage {
			fields = fields[:0]
			for _, n := range nums[from:min(from+runPage, len(nums))] {
				fields = append(fields, strconv.FormatInt(n, 10))
			}
			if !yield(fields) {
				return
			}
		}
	}, nil
}

func str(v any) string { s, _ := v.(string); return s }

// runResultPage reads the given lines of a run and what became of each: the
// lines and their states in one round trip, then the stored results, dead
// letters and admission states in another.
func (s *Runs) runResultPage(ctx context.Context, keys, lines []string) ([]RunResult, error) {
	raws, err := s.rdb.HMGet(ctx, keys[1], lines...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]RunResult, 0, len(lines))
	var ids []string
	for i, raw := range raws {
		v, ok := raw.(string)
		if !ok {
			continue // a line that was blank, invalid or never read
		}
		id, key, _ := strings.Cut(v, "\t")
		line, _ := strconv.ParseInt(lines[i], 10, 64)
		out = append(out, RunResult{Line: line, TaskID: id, IdempotencyKey: key})
		ids = append(ids, id)
	}
	if len(out) == 0 {
		return nil, nil
	}
	states, err := s.rdb.HMGet(ctx, keys[2], ids...).Result()
	if err != nil {
		return nil, err
	}
	pipe := s.rdb.Pipeline()
	results := map[int]*redis.StringCmd{}
	deads := map[int]*redis.StringCmd{}
	var waiting []int
	for i := range out {
		v, _ := states[i].(string)
		_, st, _ := strings.Cut(v, "|")
		switch st {
		case runCompleted:
			out[i].State = StatusCompleted
			results[i] = pipe.HGet(ctx, s.ledger.recKey(out[i].TaskID), "result")
		case runDead:
			out[i].State = StatusDead
			deads[i] = s.dead.getIn(ctx, pipe, out[i].TaskID)
		case runPurged:
			out[i].State = StatusPurged
		default:
			waiting = append(waiting, i)
		}
	}
	if len(results)+len(deads) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
	}
	for i, c := range results {
		var res Result
		if json.Unmarshal([]byte(c.Val()), &res) != nil {
			continue // expired with the result retention
		}
		out[i].StatusCode = res.StatusCode
		if len(res.Body) > 0 {
			out[i].Response = res.Body
		} else {
			out[i].ResponseText = res.BodyText
		}
	}
	for i, c := range deads {
		d, ok := deadOf(c)
		if !ok {
			out[i].Error = &RunError{Reason: "its dead letter is gone"}
			continue
		}
		out[i].StatusCode = d.StatusCode
		out[i].Error = &RunError{Class: d.Class, Reason: d.Reason, Body: jsonOrString(d.ErrorBody)}
	}
	if len(waiting) > 0 {
		wids := make([]string, len(waiting))
		for j, i := range waiting {
			wids[j] = out[i].TaskID
		}
		states, err := s.adm.States(ctx, wids)
		if err != nil {
			return nil, err
		}
		for j, i := range waiting {
			switch states[j] {
			case "admitted":
				out[i].State = StatusPending
			case "running":
				out[i].State = StatusActive
			case "waiting":
				out[i].State = StatusWaiting
			default:
				// In the run, but not in admission and not ended: its enqueue
				// stopped between the two (or is under way right now).
				out[i].State = StatusNotQueued
			}
		}
	}
	return out, nil
}

// jsonOrString is b as JSON: itself when it is JSON, else a JSON string.
func jsonOrString(b string) json.RawMessage {
	if b == "" {
		return nil
	}
	if json.Valid([]byte(b)) {
		return json.RawMessage(b)
	}
	q, _ := json.Marshal(b)
	return q
}

// runsOf reads the run names among a ledger record's fields.
func runsOf(fields []string) []string {
	var runs []string
	for _, f := range fields {
		if name, ok := strings.CutPrefix(f, runFieldPrefix); ok {
			runs = append(runs, name)
		}
	}
	return runs
}
