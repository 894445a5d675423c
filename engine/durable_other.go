//go:build !linux

package engine

// noAtime: only Linux has O_NOATIME (elsewhere readers poll, and the
// wake-up reads wake nobody).
const noAtime = 0
