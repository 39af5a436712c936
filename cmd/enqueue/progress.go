package main

import (
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress is a progress bar on stderr when stderr is a terminal, and nothing
// otherwise, so commands can report progress without asking where they run.
type progress struct {
	bar *progressbar.ProgressBar
}

// startProgress starts a bar counting unit (max -1: unknown total). Only one
// bar runs at a time; messages logged meanwhile clear it first.
func (a *app) startProgress(max int64, desc, unit string) *progress {
	return a.newProgress(max, desc, unit, true)
}

// startGauge starts a bar for a count read from elsewhere (set, not add),
// such as a run's ended updates: rate and ETA, no count (the description
// carries the numbers that matter).
func (a *app) startGauge(max int64, desc, unit string) *progress {
	return a.newProgress(max, desc, unit, false)
}

func (a *app) newProgress(max int64, desc, unit string, count bool) *progress {
	if !a.stderrTTY {
		return &progress{}
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(a.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionClearOnFinish(),
	}
	if count {
		opts = append(opts, progressbar.OptionShowCount())
	}
	bar := progressbar.NewOptions64(max, opts...)
	a.errMu.Lock()
	a.bar = bar
	a.errMu.Unlock()
	return &progress{bar: bar}
}

// add counts n more units.
func (p *progress) add(n int) {
	if p.bar != nil {
		_ = p.bar.Add(n)
	}
}

// set moves the bar to n of max, described by desc.
func (p *progress) set(n, max int64, desc string) {
	if p.bar == nil {
		return
	}
	if max != p.bar.GetMax64() {
		p.bar.ChangeMax64(max)
	}
	p.bar.Describe(desc)
	_ = p.bar.Set64(n)
}

// finish removes the bar.
func (a *app) finishProgress(p *progress) {
	if p.bar == nil {
		return
	}
	a.errMu.Lock()
	defer a.errMu.Unlock()
	_ = p.bar.Finish()
	a.bar = nil
}
