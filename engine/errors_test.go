package engine

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/segstore/segstore/wal"
)

// A corruption the wal found and the engine reports names the segment,
// the file and the advice once, keeps the wal's reason and where it lies,
// and still matches both error types and ErrCorrupt.
func TestCorruptionErrorSaysWhereAndWhatToDoOnce(t *testing.T) {
	walErr := &wal.CorruptionError{File: "/s/00000000000000000005.seg", Segment: 5, Position: 4096, Reason: "frame checksum", Err: errors.New("mismatch")}
	for _, tc := range []struct {
		name     string
		err      *CorruptionError
		want     []string
		notWant  string
		walMatch bool
	}{
		{"a wal corruption, same position", &CorruptionError{Segment: 5, File: walErr.File, Position: 4096, Op: "refresh", Err: walErr},
			[]string{"engine: refresh: segment 5 (/s/00000000000000000005.seg) at byte 4096: frame checksum: mismatch (no damaged bytes"}, "at byte 4096 (at byte", true},
		{"a wal corruption, another position", &CorruptionError{Segment: 5, File: walErr.File, Position: 0, Op: "import", Err: walErr},
			[]string{"at byte 0: frame checksum: mismatch (at byte 4096) (nothing of it was imported"}, "", true},
		{"a plain cause", &CorruptionError{Segment: 5, File: walErr.File, Position: 12, Op: "read", Err: errors.New("record checksum")},
			[]string{"at byte 12: record checksum (no damaged bytes"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := tc.err.Error()
			for _, w := range tc.want {
				assert.Contains(t, msg, w)
			}
			if tc.notWant != "" {
				assert.NotContains(t, msg, tc.notWant)
			}
			assert.NotContains(t, msg, "wal: corruption", "the wal's own location is not repeated")
			assert.NotContains(t, msg, "repair explicitly", "the wal's advice is not repeated")
			assert.ErrorIs(t, tc.err, ErrCorrupt)
			var we *wal.CorruptionError
			assert.Equal(t, tc.walMatch, errors.As(tc.err, &we))
		})
	}
}
