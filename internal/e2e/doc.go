// Package e2e holds the end-to-end tests: they build the real worker, enqueue
// and fake-truto binaries, run them as processes against a private redis-server,
// and judge the run by what the fake Truto counted.
package e2e
