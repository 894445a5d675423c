//go:build !linux

package engine_test

import (
	"os"

	"github.com/segstore/segstore/blockdev"
)

// openDirect opens name for reading with the platform's direct I/O (a
// baseline's reader), as blockdev opens it.
func openDirect(name string) (*os.File, error) {
	d, err := blockdev.Open(name, blockdev.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	return d.File(), nil
}
