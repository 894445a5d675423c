package raftstore

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// FuzzDecodeEntry feeds arbitrary records to the entry decoder: it must
// never panic, and an entry it accepts must encode to a record that
// decodes to the same entry.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(appendEntry(nil, &raft.Log{Index: 7, Term: 2, Type: raft.LogCommand, Data: []byte("set x=1"), Extensions: []byte{1}, AppendedAt: time.Unix(0, 99)}))
	f.Add(appendEntry(nil, &raft.Log{Index: 1}))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if decodeEntry(b, &l) != nil {
			return
		}
		enc := appendEntry(nil, &l)
		require.LessOrEqual(t, len(enc), entrySize(&l))
		var again raft.Log
		require.NoError(t, decodeEntry(enc, &again))
		require.Equal(t, l.Index, again.Index)
		require.Equal(t, l.Term, again.Term)
		require.Equal(t, l.Type, again.Type)
		require.True(t, l.AppendedAt.Equal(again.AppendedAt))
		require.Equal(t, len(l.Data), len(again.Data))
		require.Equal(t, string(l.Data), string(again.Data))
		require.Equal(t, string(l.Extensions), string(again.Extensions))
	})
}
