package main

// The open loop: requests fall due on a schedule (constant gaps, or Poisson arrivals: exponential
// gaps) whatever the server does, as independent users' requests would. A closed loop sends less
// while the server stalls and so records a stall as one slow request per caller (coordinated
// omission); here every request due during a stall is timed from when it was due.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// lateBy is how far past its due time a request may be sent before it counts as sent late: the
// sender was not ready on time (a busy client CPU, a timer that fired late). Its latency still
// counts from when it was due; the count says how much of the schedule the client kept.
const lateBy = time.Millisecond

// gaps returns the gaps between arrivals at rate per second: constant, or Poisson (exponential
// gaps, mean 1/rate) from seed.
func gaps(arrivals string, rate float64, seed uint64) func() time.Duration {
	mean := float64(time.Second) / rate
	if arrivals == "constant" {
		return func() time.Duration { return time.Duration(mean) }
	}
	random := rand.New(rand.NewPCG(seed, 0x7477696e))
	return func() time.Duration { return time.Duration(random.ExpFloat64() * mean) }
}

// openLoopCounts are the counts of the requests that fell due in the measured window.
type openLoopCounts struct {
	due       int // fell due
	sent      int // sent (due minus over the bound)
	late      int // sent more than lateBy after they fell due
	overBound int // not sent: s.concurrency requests were in flight already; failures
}

// firstError keeps the first failed call's error.
type firstError struct {
	once sync.Once
	err  error
}

func (f *firstError) keep(err error) { f.once.Do(func() { f.err = err }) }

// runOpenLoop sends on the schedule for s.warm, then counts for s.duration the requests that fall
// due, waits for those in flight, and writes the JSON line: the closed loop's figures (requests
// and latencies of the counted ones that succeeded) and rate, due, sent, late, over_bound and
// failures (sent, and answered with an error: past its capacity a server may refuse some). It
// waits with sleep (a test passes one that oversleeps). When no call at all succeeded, it ends
// with the first call's error instead: the request or the address is wrong, not the load.
func runOpenLoop(s settings, sleep func(time.Duration), out io.Writer) error {
	conn, err := connect(s.address)
	if err != nil {
		return err
	}
	defer conn.Close()
	next := gaps(s.arrivals, s.rate, s.seed)
	inFlight := make(chan struct{}, s.concurrency)
	var failed firstError
	var failures atomic.Int64
	var calls sync.WaitGroup
	var lock sync.Mutex
	var latencies []float64
	var completed atomic.Int64
	var counts openLoopCounts

	cpu, start := cpuSeconds(), time.Now()
	measured, end := start.Add(s.warm), start.Add(s.warm+s.duration)
	offset := time.Duration(0)
	for {
		offset += next()
		due := start.Add(offset)
		if !due.Before(end) {
			break
		}
		if wait := time.Until(due); wait > 0 {
			sleep(wait)
		}
		counted := !due.Before(measured)
		select {
		case inFlight <- struct{}{}:
		default:
			if counted {
				counts.due++
				counts.overBound++
			}
			continue
		}
		if counted {
			counts.due++
			counts.sent++
			if time.Since(due) > lateBy {
				counts.late++
			}
		}
		calls.Add(1)
		go func(due time.Time, counted bool) {
			defer calls.Done()
			defer func() { <-inFlight }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			in, reply := s.request, []byte(nil)
			err := conn.Invoke(ctx, modelInfer, &in, &reply)
			cancel()
			if err != nil {
				failed.keep(err)
				if counted {
					failures.Add(1)
				}
				return
			}
			completed.Add(1)
			if counted {
				ms := float64(time.Since(due).Nanoseconds()) / 1e6
				lock.Lock()
				latencies = append(latencies, ms)
				lock.Unlock()
			}
		}(due, counted)
	}
	calls.Wait() // the requests due in the window count however late they are answered
	if failed.err != nil && completed.Load() == 0 {
		return fmt.Errorf("a call failed: %w", failed.err)
	}
	cpu = cpuSeconds() - cpu
	wall := time.Since(start).Seconds()
	if err := writeLatencies(s.latencyFile, latencies); err != nil {
		return err
	}
	figures := map[string]float64{
		"requests":   float64(len(latencies)),
		"completed":  float64(completed.Load()),
		"rps":        float64(len(latencies)) / s.duration.Seconds(),
		"client_cpu": cpu / wall,
		"rate":       s.rate,
		"due":        float64(counts.due),
		"sent":       float64(counts.sent),
		"late":       float64(counts.late),
		"over_bound": float64(counts.overBound),
		"failures":   float64(failures.Load()),
	}
	if len(latencies) > 0 { // none when every request was over the bound
		sort.Float64s(latencies)
		figures["p50_ms"] = percentile(latencies, 50)
		figures["p99_ms"] = percentile(latencies, 99)
	}
	return json.NewEncoder(out).Encode(figures)
}
