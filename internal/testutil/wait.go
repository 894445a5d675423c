package testutil

import (
	"fmt"
	"testing"
	"time"
)

// WedgeTimeout is how long Receive waits before it calls a test wedged. It
// is long on purpose: it detects a wait that would never end, not a slow
// one, so a loaded machine never fails a test that would pass.
const WedgeTimeout = time.Minute

// Receive waits for a value on ch and returns it. After WedgeTimeout it
// fails the test with the message format and args give (what did not
// happen), followed by how long it waited.
func Receive[T any](t testing.TB, ch <-chan T, format string, args ...any) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(WedgeTimeout):
		t.Fatalf("%s (waited %v)", fmt.Sprintf(format, args...), WedgeTimeout)
		var zero T
		return zero
	}
}
