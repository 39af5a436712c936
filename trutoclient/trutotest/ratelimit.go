package trutotest

import (
	"net/http"
	"strconv"
	"time"
)

// window is an exact sliding-window log of admitted request times.
type window struct {
	ts   []time.Time // ts[head:] are inside the window, oldest first
	head int
	peak int // most entries ever inside the window at once
}

// prune drops the entries at or before cutoff (now minus the window).
func (w *window) prune(cutoff time.Time) {
	for w.head < len(w.ts) && !w.ts[w.head].After(cutoff) {
		w.head++
	}
	if w.head > 1024 && w.head*2 > len(w.ts) {
		n := copy(w.ts, w.ts[w.head:])
		w.ts, w.head = w.ts[:n], 0
	}
}

func (w *window) count() int { return len(w.ts) - w.head }

func (w *window) add(t time.Time) {
	w.ts = append(w.ts, t)
	w.peak = max(w.peak, w.count())
}

// reopens returns how long until fewer than n entries remain in a window of span.
func (w *window) reopens(now time.Time, span time.Duration, n int) time.Duration {
	c := w.count()
	if c < n {
		return 0
	}
	return w.ts[w.head+c-n].Add(span).Sub(now)
}

// admitLocked applies the token limit, then the account limit; only admitted requests are
// logged. limited says whether a is the 429 to answer.
func (f *Fake) admitLocked(now time.Time, account string, fl Faults) (a answer, limited bool) {
	aw := f.accountWins[account]
	if aw == nil {
		aw = &window{}
		f.accountWins[account] = aw
	}
	f.tokenWin.prune(now.Add(-fl.TokenLimit.span()))
	aw.prune(now.Add(-fl.AccountLimit.span()))
	for _, c := range []struct {
		l   Limit
		w   *window
		msg string
	}{
		{fl.TokenLimit, &f.tokenWin, "Rate limit exceeded for this API token."},
		{fl.AccountLimit, aw, "Rate limit exceeded for this integrated account."},
	} {
		if !c.l.active() || c.w.count() < c.l.Requests {
			continue
		}
		secs := max(ceilSeconds(c.w.reopens(now, c.l.span(), c.l.Requests)), 1)
		a := trutoError(http.StatusTooManyRequests, c.msg)
		a.header.Set("Retry-After", strconv.Itoa(secs))
		a.header.Set("ratelimit-limit", limitHeader(c.l))
		a.header.Set("ratelimit-remaining", "0")
		a.header.Set("ratelimit-reset", strconv.Itoa(secs))
		return a, true
	}
	f.tokenWin.add(now)
	aw.add(now)
	return answer{}, false
}

// limitHeader formats l as Truto's normalized ratelimit-limit header, "50;w=10".
func limitHeader(l Limit) string {
	return strconv.Itoa(l.Requests) + ";w=" + strconv.Itoa(ceilSeconds(l.span()))
}

// rateHeadersLocked adds the account's rate-limit headers to a success when asked to.
func (f *Fake) rateHeadersLocked(h http.Header, now time.Time, account string, fl Faults) {
	l := fl.AccountLimit
	if !fl.RateLimitHeaders || !l.active() {
		return
	}
	w := f.accountWins[account]
	c := w.count()
	reset := l.span()
	if c > 0 {
		reset = w.ts[w.head].Add(l.span()).Sub(now)
	}
	h.Set("ratelimit-limit", limitHeader(l))
	h.Set("ratelimit-remaining", strconv.Itoa(max(l.Requests-c, 0)))
	h.Set("ratelimit-reset", strconv.Itoa(ceilSeconds(reset)))
}

// AdmittedPerWindow returns the most requests admitted for account within any one
// AccountLimit window (10 s when the limit sets none), to check a limit was never exceeded
// and was well used.
func (f *Fake) AdmittedPerWindow(account string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w := f.accountWins[account]; w != nil {
		return w.peak
	}
	return 0
}
