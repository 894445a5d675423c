package main

import (
	"math"
	"slices"
	"time"
)

// spread is the median and range of a measurement over repetitions.
type spread struct {
	N                int
	Median, Min, Max float64
}

// summarize returns the median (the mean of the middle two for an even
// count), min and max of vs; N is 0 for none.
func summarize(vs []float64) spread {
	if len(vs) == 0 {
		return spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{N: len(s), Median: m, Min: s[0], Max: s[len(s)-1]}
}

// percentile returns the q-quantile (0..1) of ds by the nearest-rank
// method, sorting ds in place; 0 for none.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	rank := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[max(0, min(rank, len(ds)-1))]
}

// ratio is how many times better a is than b, for a metric where higher
// is better when higher is set (else lower is better): above 1, a wins.
// It is 0 when either is not positive.
func ratio(a, b float64, higher bool) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if higher {
		return a / b
	}
	return b / a
}

// best returns the index of the best of vs (higher or lower is better),
// skipping values that are not positive; -1 if none is.
func best(vs []float64, higher bool) int {
	bi := -1
	for i, v := range vs {
		if v <= 0 {
			continue
		}
		if bi < 0 || (higher && v > vs[bi]) || (!higher && v < vs[bi]) {
			bi = i
		}
	}
	return bi
}
