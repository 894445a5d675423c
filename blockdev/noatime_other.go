//go:build !linux

package blockdev

// noAtime: only Linux has O_NOATIME (elsewhere readers poll, and the
// reads of a SharedMapping wake nobody).
const noAtime = 0
