package blockdev

import "errors"

// ErrReplaced: Reopen found the file's name gone or naming another file,
// on a platform that can only reopen a file by its name (macOS, the BSDs):
// the view that wanted it must be opened again.
var ErrReplaced = errors.New("blockdev: the file's name was removed or replaced since it was opened")
