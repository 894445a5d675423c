package engine

import "github.com/segstore/segstore/blockdev"

// lockName is the file a writer flocks so that two processes cannot write
// one store.
const lockName = "LOCK"

// dirLocker is a directory a writer can lock (blockdev.OSDir): Open takes
// the lock before it reads or writes a file, so that two writers, in one
// process or two, never open one store.
type dirLocker interface {
	Lock(name string) (release func() error, err error)
}

var _ dirLocker = (*blockdev.OSDir)(nil)

// writerLive reports whether a writer holds the lock of the store in d
// (the lock belongs to an open file, so this sees a writer in this process
// too). It queries the lock without taking it, so a writer opening at the
// same moment never finds it taken by the probe; it creates nothing. A
// lock that cannot be queried counts as held, so that readers show only
// what a writer has acknowledged. A simulated directory has no lock, and
// no writer in another process.
func writerLive(d blockdev.Dir) bool {
	od, ok := d.(*blockdev.OSDir)
	if !ok {
		return false
	}
	held, _, err := od.LockHolder(lockName)
	return held || err != nil
}
