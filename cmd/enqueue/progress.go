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
	if !a.stderrTTY {
		return &progress{}
	}
	bar := progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(a.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
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
