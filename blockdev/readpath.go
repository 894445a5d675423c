package blockdev

// ReadPathStats counts the process's direct reads, each a request to the
// device, by the way they went.
type ReadPathStats struct {
	Ring  uint64 // through io_uring
	Pread uint64 // through pread(2): alone in flight, no free entry, or no ring
	// RingOff says why no ring is used, when none is ("" when one is, or
	// when no read has needed one yet).
	RingOff string
}
