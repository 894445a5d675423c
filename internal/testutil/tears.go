package testutil

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// MaxTears bounds the images EveryTear may make, so that a case can try
// every one of them.
const MaxTears = 1 << 12

// EveryTear calls check with every image a crash can leave after the
// writes that took a file through versions (versions[0] is what was
// durable, each later one the file after one more write, none synced), on
// a device that writes sectors of sector bytes atomically, in any order:
// each sector is, independently, what any one of the versions holds there
// (a sector written twice may keep either write, or neither). A sector that
// every version holds alike reads the same whatever happened to it. The
// image has the largest of the lengths: a file a write grew keeps its new
// size (torn sectors read as zeros). Every combination is tried, not a
// sample: the case fails if there are more than MaxTears, or if the writes
// changed nothing (there would be nothing to tear). It returns how many
// images it checked.
func EveryTear(t testing.TB, sector int, versions [][]byte, check func(name string, img []byte)) int {
	t.Helper()
	size := 0
	for _, v := range versions {
		size = max(size, len(v))
	}
	padded := make([][]byte, len(versions))
	for i, v := range versions {
		padded[i] = make([]byte, size)
		copy(padded[i], v)
	}
	// The sectors that differ between versions (at ats), and the
	// distinct contents of each.
	var ats []int
	var choices [][][]byte
	images := 1
	for s := 0; s < size; s += sector {
		e := min(s+sector, size)
		var contents [][]byte
		for _, v := range padded {
			if !slices.ContainsFunc(contents, func(b []byte) bool { return bytes.Equal(b, v[s:e]) }) {
				contents = append(contents, v[s:e])
			}
		}
		if len(contents) > 1 {
			choices = append(choices, contents)
			ats = append(ats, s)
			images *= len(contents)
			require.LessOrEqual(t, images, MaxTears, "too many ways to tear to try every one")
		}
	}
	require.NotEmpty(t, choices, "the writes change nothing")
	pick := make([]int, len(choices))
	for n := 0; n < images; n++ {
		img := append([]byte(nil), padded[0]...)
		for i, contents := range choices {
			copy(img[ats[i]:], contents[pick[i]])
		}
		check(fmt.Sprintf("tear %d of %d: sectors %v picked %v", n, images, ats, pick), img)
		for i := range pick { // the next combination, like an odometer
			if pick[i]++; pick[i] < len(choices[i]) {
				break
			}
			pick[i] = 0
		}
	}
	return images
}
