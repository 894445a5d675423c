package engine

import "github.com/segstore/segstore/blockdev"

// lockName is the file a writer flocks so that two processes cannot write
// one store.
const lockName = "LOCK"

// dirCaps is what the log's directory offers beyond blockdev.Dir, asked
// once when the log opens (capsOf). Each is nil when the directory lacks
// it, and the feature that needs it falls back:
//
//   - lock: a writer takes no lock, and readers see no live writer;
//   - stat: Refresh is refused, and a read-only open trusts that its files
//     are the ones it listed;
//   - plain: Refresh and imports are refused;
//   - share: no DURABLE file: a writer publishes no acknowledged end, and
//     readers see none;
//   - watch: KeepRefreshed only polls.
//
// OSDir and SimDir have them all.
type dirCaps struct {
	lock  blockdev.Locker      // the writer's lock (LOCK)
	stat  blockdev.Stater      // which file a name is: replaced segments and DURABLE
	plain blockdev.PlainOpener // START read through the page cache, imports received
	share blockdev.Mapper      // DURABLE mapped shared
	watch blockdev.Watcher     // KeepRefreshed's wake-ups
}

func capsOf(d blockdev.Dir) dirCaps {
	var c dirCaps
	c.lock, _ = d.(blockdev.Locker)
	c.stat, _ = d.(blockdev.Stater)
	c.plain, _ = d.(blockdev.PlainOpener)
	c.share, _ = d.(blockdev.Mapper)
	c.watch, _ = d.(blockdev.Watcher)
	return c
}

// follows reports whether Refresh can follow a writer in the directory.
func (c dirCaps) follows() bool { return c.stat != nil && c.plain != nil }

// writerLive reports whether a writer holds the lock of the store in a
// directory of caps c (the lock belongs to an open file, so this sees a
// writer in this process too). It queries the lock without taking it, so
// a writer opening at the same moment never finds it taken by the probe;
// it creates nothing. A lock that cannot be queried counts as held, so
// that readers show only what a writer has acknowledged. A directory
// without a lock has no writer that another open could see.
func writerLive(c dirCaps) bool {
	if c.lock == nil {
		return false
	}
	held, _, err := c.lock.LockHolder(lockName)
	return held || err != nil
}
