package cli

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzReadRecords (seeds in testdata/fuzz): append's input decoder, on
// any bytes, never panics,
// and the records it returns are the input's: re-encoded, they are a
// prefix of it (all of it when it returns no error).
func FuzzReadRecords(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte, binaryRecs bool) {
		var again bytes.Buffer
		err := readRecords(namedReader{"fuzz", bytes.NewReader(in)}, binaryRecs, func(rec []byte) error {
			if binaryRecs {
				binary.Write(&again, binary.LittleEndian, uint32(len(rec)))
				again.Write(rec)
			} else {
				again.Write(rec)
				again.WriteByte('\n')
			}
			return nil
		})
		got := again.Bytes()
		if !binaryRecs && !bytes.HasSuffix(in, []byte("\n")) && len(got) > 0 {
			got = got[:len(got)-1] // the last line had no newline
		}
		if !bytes.HasPrefix(in, got) {
			t.Fatalf("records re-encoded are not the input's prefix:\n%q\n%q", in, got)
		}
		if err == nil && len(got) != len(in) {
			t.Fatalf("no error, but %d of %d bytes read as records", len(got), len(in))
		}
		if err != nil && ExitCode(err) != ExitUsage {
			t.Fatalf("bad input is a usage error, got %v (exit %d)", err, ExitCode(err))
		}
	})
}

// FuzzParseSize (seeds in testdata/fuzz): a size flag's parser never panics, and what it accepts
// prints back (formatSize) as the same number of bytes.
func FuzzParseSize(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s, true)
		if err != nil {
			return
		}
		back, err := parseSize(formatSize(n), true)
		if err != nil || back != n {
			t.Fatalf("%q: %d, printed %q, read back %d (%v)", s, n, formatSize(n), back, err)
		}
	})
}
