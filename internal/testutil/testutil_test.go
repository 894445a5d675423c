package testutil

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSeeds(t *testing.T) {
	tests := []struct {
		name       string
		long, seed string
		want       []uint64
	}{
		{"short", "", "", []uint64{1, 2, 3}},
		{"long", "1", "", []uint64{1, 2, 3, 4, 5}},
		{"one seed replayed", "", "42", []uint64{42}},
		{"one seed replayed in a long run", "1", "7", []uint64{7}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(LongEnv, tc.long)
			t.Setenv(SeedEnv, tc.seed)
			assert.Equal(t, tc.long != "", Long())
			assert.Equal(t, tc.want, Seeds(t, 3, 5))
		})
	}
}

func TestRecord(t *testing.T) {
	for _, size := range []int{0, 1, 7, 8, 9, 255, 256, 257, 1000} {
		for _, n := range []uint64{0, 1, 300, 1 << 40} {
			b := Record(n, size)
			require.Len(t, b, size)
			for i := range b {
				want := byte(n*131 + uint64(i)*7 + 1)
				if size >= 8 && i < 8 {
					want = byte(n >> (8 * i))
				}
				require.Equal(t, want, b[i], "record %d of %d bytes, byte %d", n, size, i)
			}
			if size >= 8 {
				assert.Equal(t, n, binary.LittleEndian.Uint64(b))
			}
			assert.Equal(t, b, Record(n, size), "deterministic")
		}
	}
	assert.NotEqual(t, Record(1, 100), Record(2, 100))
}

func TestLabelled(t *testing.T) {
	tests := []struct {
		label string
		fill  byte
		size  int
		want  string
	}{
		{"golden-3", 3, 12, "golden-3\x03\x03\x03\x03"},
		{"abc", 'x', 3, "abc"},
		{"abcdef", 'x', 2, "ab"},
		{"", 'y', 4, "yyyy"},
		{"z", 0, 0, ""},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, string(Labelled(tc.label, tc.fill, tc.size)), "%q %d", tc.label, tc.size)
	}
	long := Labelled("L", 9, 1000)
	for i := 1; i < len(long); i++ {
		require.EqualValues(t, 9, long[i], "byte %d", i)
	}
}

func TestStamped(t *testing.T) {
	for _, size := range []int{0, 5, 12, 13, 300, 600} {
		b := Stamped(size, 17, 5, 2)
		require.Len(t, b, size)
		var stamp [12]byte
		binary.LittleEndian.PutUint32(stamp[0:], 17)
		binary.LittleEndian.PutUint32(stamp[4:], 5)
		binary.LittleEndian.PutUint32(stamp[8:], 2)
		assert.Equal(t, stamp[:min(12, size)], b[:min(12, size)])
		for k := 12; k < size; k++ {
			require.Equal(t, byte(17^5*3^2*5^k), b[k], "size %d, byte %d", size, k)
		}
	}
	assert.NotEqual(t, Stamped(40, 1, 2, 3), Stamped(40, 1, 2, 4))
}

// TestFillXor: FillXor writes what a loop of stores does, for every start
// and a length on either side of each period boundary.
func TestFillXor(t *testing.T) {
	for _, n := range []int{0, 1, 8, 255, 256, 257, 511, 512, 513, 3000} {
		for _, from := range []int{0, 1, 8, 255, 256, 300} {
			if from > n {
				continue
			}
			x := byte(n*31 + from)
			want := make([]byte, n)
			for i := from; i < n; i++ {
				want[i] = byte(i) ^ x
			}
			got := make([]byte, n)
			FillXor(got, from, x)
			require.Equal(t, want, got, "n %d from %d", n, from)
		}
	}
}

func TestFileDamage(t *testing.T) {
	orig := []byte("0123456789")
	tests := []struct {
		name   string
		damage func(t testing.TB, file string)
		want   []byte
	}{
		{"xor one byte", func(t testing.TB, f string) { XorByte(t, f, 3, 0x40) }, []byte("012s456789")},
		{"xor a range", func(t testing.TB, f string) { XorRange(t, f, 8, 2, 0x01) }, []byte("0123456798")},
		{"zero a range", func(t testing.TB, f string) { ZeroRange(t, f, 0, 3) }, []byte("\x00\x00\x003456789")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "f")
			require.NoError(t, os.WriteFile(file, orig, 0o600))
			tc.damage(t, file)
			got, err := os.ReadFile(file)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	t.Run("a range past the end fails and changes nothing", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "f")
		require.NoError(t, os.WriteFile(file, orig, 0o600))
		rec := &recorder{TB: t}
		func() {
			defer func() { _ = recover() }()
			XorRange(rec, file, 8, 4, 1)
		}()
		assert.True(t, rec.failed)
		got, err := os.ReadFile(file)
		require.NoError(t, err)
		assert.Equal(t, orig, got)
	})
}

func TestReadTail(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(file, []byte("0123456789"), 0o600))
	for n, want := range map[int64]string{0: "", 3: "789", 10: "0123456789", 20: "0123456789"} {
		assert.Equal(t, want, string(ReadTail(t, file, n)), "last %d bytes", n)
	}
}

func TestReceive(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 5
	assert.Equal(t, 5, Receive(t, ch, "a send"))
}

// recorder is a testing.TB whose failures are recorded, not reported.
type recorder struct {
	testing.TB
	failed bool
	msg    string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(f string, a ...any) {
	r.failed = true
	r.msg += fmt.Sprintf(f, a...)
}
func (r *recorder) FailNow()                  { r.failed = true; panic(r) }
func (r *recorder) Fatalf(f string, a ...any) { r.Errorf(f, a...); r.FailNow() }
