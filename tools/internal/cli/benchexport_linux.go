package cli

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

var exportPaths = []exportPath{
	{"read+write", 2, sendReadWrite},
	{"sendfile", 0, sendSendfile},
	{"splice", 0, sendSplice},
	{"mmap+write", 1, sendMmapWrite},
}

// ExportBench builds one sealed segment of opts.Size bytes, then sends it
// over loopback TCP by each path (read()+write() through a user buffer,
// sendfile, splice through a pipe, mmap+write) to a receiver that reads
// and checksums it, and reports throughput, CPU seconds per GiB of each
// side (the thread's own rusage: each side runs on a locked OS thread),
// the sender's system calls per GiB, and user-space copies of the payload.
func ExportBench(out io.Writer, opts ExportBenchOptions) ([]ExportResult, error) {
	if opts.Size <= 0 {
		opts.Size = 1 << 30
	}
	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "segtool-bench-export-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	path, size, err := buildSegment(filepath.Join(dir, "store"), opts.Size)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want, err := crcOf(f, size)
	if err != nil {
		return nil, err
	}
	if opts.Runs <= 0 {
		opts.Runs = 3
	}
	runs := make([][]ExportResult, len(exportPaths))
	for range opts.Runs {
		for i, p := range exportPaths {
			if opts.Cold {
				if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
					return nil, fmt.Errorf("segtool: --cold needs root to drop the page cache: %w", err)
				}
			} else if _, err := crcOf(f, size); err != nil { // warm: the file in the page cache
				return nil, err
			}
			r, err := runExport(p, f, size, opts.Pin)
			if err != nil {
				return nil, fmt.Errorf("segtool: export by %s: %w", p.name, err)
			}
			if r.Checksum != want {
				return nil, fmt.Errorf("segtool: export by %s delivered bytes with CRC-32C %s, the file's is %s", p.name, r.Checksum, want)
			}
			runs[i] = append(runs[i], r)
		}
	}
	results := make([]ExportResult, len(exportPaths))
	for i, rs := range runs {
		results[i] = rs[0]
		results[i].Seconds = median(rs, func(r ExportResult) float64 { return r.Seconds })
		results[i].GBps = median(rs, func(r ExportResult) float64 { return r.GBps })
		results[i].SenderCPU = median(rs, func(r ExportResult) float64 { return r.SenderCPU })
		results[i].ReceiverCPU = median(rs, func(r ExportResult) float64 { return r.ReceiverCPU })
		results[i].SyscallsPerGiB = median(rs, func(r ExportResult) float64 { return r.SyscallsPerGiB })
	}
	if opts.JSON {
		return results, writeReport(out, map[string]any{"segment_bytes": size, "pin": opts.Pin, "cold": opts.Cold, "runs": opts.Runs, "results": results})
	}
	fmt.Fprintf(out, "segment of %d bytes sent over loopback TCP (pin=%v cold=%v), medians of %d interleaved runs; every path delivered CRC-32C %s\n",
		size, opts.Pin, opts.Cold, opts.Runs, want)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tGB/s\tsender CPU s/GiB\treceiver CPU s/GiB\tsender syscalls/GiB\tuser-space copies\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%.2f\t%.3f\t%.3f\t%.0f\t%d\t\n", r.Path, r.GBps, r.SenderCPU, r.ReceiverCPU, r.SyscallsPerGiB, r.UserCopies)
	}
	return results, tw.Flush()
}

// threadCPU is the calling thread's user+system CPU time.
func threadCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// lockTo locks the goroutine to its thread and, if cpu >= 0, the thread to
// that CPU.
func lockTo(cpu int) error {
	runtime.LockOSThread()
	if cpu < 0 {
		return nil
	}
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

func runExport(p exportPath, f *os.File, size int64, pin bool) (ExportResult, error) {
	senderCPU, receiverCPU := -1, -1
	if pin {
		if runtime.NumCPU() < 2 {
			return ExportResult{}, errors.New("--pin needs two CPUs")
		}
		senderCPU, receiverCPU = 0, 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ExportResult{}, err
	}
	defer ln.Close()
	type received struct {
		n   int64
		cpu time.Duration
		crc string
		err error
	}
	done := make(chan received, 1)
	go func() {
		defer runtime.UnlockOSThread()
		var r received
		if r.err = lockTo(receiverCPU); r.err != nil {
			done <- r
			return
		}
		c, err := ln.Accept()
		if err != nil {
			r.err = err
			done <- r
			return
		}
		defer c.Close()
		start := threadCPU()
		h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			h.Write(buf[:n])
			r.n += int64(n)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				break
			}
		}
		r.cpu, r.crc = threadCPU()-start, fmt.Sprintf("%08x", h.Sum32())
		done <- r
	}()

	type sent struct {
		calls int64
		cpu   time.Duration
		err   error
	}
	began := time.Now()
	sentCh := make(chan sent, 1)
	go func() {
		defer runtime.UnlockOSThread()
		var s sent
		if s.err = lockTo(senderCPU); s.err != nil {
			sentCh <- s
			return
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			s.err = err
			sentCh <- s
			return
		}
		start := threadCPU()
		s.calls, s.err = p.send(f, size, c)
		s.cpu = threadCPU() - start
		if err := c.Close(); s.err == nil {
			s.err = err
		}
		sentCh <- s
	}()
	s, r := <-sentCh, <-done
	elapsed := time.Since(began)
	if err := errors.Join(s.err, r.err); err != nil {
		return ExportResult{}, err
	}
	if r.n != size {
		return ExportResult{}, fmt.Errorf("receiver got %d of %d bytes", r.n, size)
	}
	gib := float64(size) / (1 << 30)
	return ExportResult{
		Path: p.name, Bytes: size, Seconds: elapsed.Seconds(), GBps: float64(size) / elapsed.Seconds() / 1e9,
		SenderCPU: s.cpu.Seconds() / gib, ReceiverCPU: r.cpu.Seconds() / gib,
		SyscallsPerGiB: float64(s.calls) / gib, UserCopies: p.copies, Checksum: r.crc,
	}, nil
}

// writeAll writes b to the socket with write(2), waiting in the poller
// when the socket buffer is full, and counts the calls.
func writeAll(sock net.Conn, b []byte, calls *int64) error {
	rc, err := sock.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			*calls++
			n, err := unix.Write(int(fd), b)
			if err == unix.EAGAIN {
				return false
			}
			if err != nil {
				werr = err
				return true
			}
			b = b[n:]
		}
		return true
	})
	return errors.Join(err, werr)
}

func sendReadWrite(f *os.File, size int64, sock net.Conn) (int64, error) {
	var calls int64
	buf := make([]byte, 256<<10)
	for off := int64(0); off < size; {
		calls++
		n, err := unix.Pread(int(f.Fd()), buf[:min(int64(len(buf)), size-off)], off)
		if err != nil {
			return calls, err
		}
		if n == 0 {
			return calls, io.ErrUnexpectedEOF
		}
		if err := writeAll(sock, buf[:n], &calls); err != nil {
			return calls, err
		}
		off += int64(n)
	}
	return calls, nil
}

func sendMmapWrite(f *os.File, size int64, sock net.Conn) (int64, error) {
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(data)
	_ = unix.Madvise(data, unix.MADV_SEQUENTIAL)
	var calls int64
	return calls, writeAll(sock, data, &calls)
}

func sendSendfile(f *os.File, size int64, sock net.Conn) (int64, error) {
	rc, err := sock.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var calls int64
	var serr error
	off := int64(0)
	err = rc.Write(func(fd uintptr) bool {
		for off < size {
			calls++
			_, err := unix.Sendfile(int(fd), int(f.Fd()), &off, int(min(size-off, 1<<30)))
			if err == unix.EAGAIN {
				return false
			}
			if err != nil {
				serr = err
				return true
			}
		}
		return true
	})
	return calls, errors.Join(err, serr)
}

func sendSplice(f *os.File, size int64, sock net.Conn) (int64, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return 0, err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	const chunk = 1 << 20
	calls := int64(1)
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, chunk); err != nil {
		return calls, err
	}
	rc, err := sock.(*net.TCPConn).SyscallConn()
	if err != nil {
		return calls, err
	}
	for off := int64(0); off < size; {
		calls++
		n, err := unix.Splice(int(f.Fd()), &off, p[1], nil, int(min(size-off, chunk)), unix.SPLICE_F_MOVE)
		if err != nil {
			return calls, err
		}
		if n == 0 {
			return calls, io.ErrUnexpectedEOF
		}
		var serr error
		err = rc.Write(func(fd uintptr) bool {
			for n > 0 {
				calls++
				m, err := unix.Splice(p[0], nil, int(fd), nil, int(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if err == unix.EAGAIN {
					return false
				}
				if err != nil {
					serr = err
					return true
				}
				n -= m
			}
			return true
		})
		if err := errors.Join(err, serr); err != nil {
			return calls, err
		}
	}
	return calls, nil
}
