//go:build race

package testrig

// raceDetector is true in a build with -race.
const raceDetector = true
