//go:build unix

package engine

import (
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// mkfifo makes a FIFO at path.
func mkfifo(t *testing.T, path string) { require.NoError(t, syscall.Mkfifo(path, 0o644)) }
