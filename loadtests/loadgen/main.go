// twinbench-loadgen: the closed-loop V2 load generator of `twinbench bench serving`.
//
//	twinbench-loadgen ADDRESS REQUEST_FILE CONCURRENCY SECONDS
//
// sends the serialized ModelInferRequest in REQUEST_FILE over and over from CONCURRENCY callers on
// one connection, and prints one JSON line: requests, p50_ms, p99_ms, rps, and client_cpu, the
// share of one CPU it used (near 1.0: the figures are the client's limit, not the server's). In
// Go because a Python gRPC client costs more per call than the gateway's front it measures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	modelInfer = "/inference.GRPCInferenceService/ModelInfer"
	warmUp     = time.Second
)

// rawCodec sends the request file as it is and keeps the reply as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(d []byte, v any) error { *(v.(*[]byte)) = d; return nil }
func (rawCodec) Name() string                    { return "proto" }

func cpuSeconds() float64 {
	var u syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return time.Duration(u.Utime.Nano() + u.Stime.Nano()).Seconds()
}

// percentile is the p-th percentile of sorted values, by the nearest rank below.
func percentile(sorted []float64, p float64) float64 {
	return sorted[int(p/100*float64(len(sorted)-1))]
}

type settings struct {
	address     string
	request     []byte
	concurrency int
	duration    time.Duration
}

func parseArgs(args []string) (settings, error) {
	if len(args) != 4 {
		return settings{}, errors.New("usage: twinbench-loadgen ADDRESS REQUEST_FILE CONCURRENCY SECONDS")
	}
	request, err := os.ReadFile(args[1])
	if err != nil {
		return settings{}, err
	}
	concurrency, err1 := strconv.Atoi(args[2])
	seconds, err2 := strconv.ParseFloat(args[3], 64)
	if err1 != nil || err2 != nil || concurrency < 1 || !(seconds > 0) {
		return settings{}, errors.New("CONCURRENCY is a positive integer and SECONDS a positive number")
	}
	return settings{args[0], request, concurrency, time.Duration(seconds * float64(time.Second))}, nil
}

// run measures for s.duration after a warm-up and writes the one JSON line to out; the first
// failed call ends it with that call's error.
func run(s settings, warm time.Duration, out io.Writer) error {
	conn, err := grpc.NewClient(s.address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		return err
	}
	var counting, stop atomic.Bool
	latencies := make([][]float64, s.concurrency)
	failures := make(chan error, s.concurrency)
	var callers sync.WaitGroup
	for i := range latencies {
		callers.Add(1)
		go func(mine *[]float64) {
			defer callers.Done()
			for !stop.Load() {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				in, reply := s.request, []byte(nil)
				err := conn.Invoke(ctx, modelInfer, &in, &reply)
				cancel()
				if err != nil {
					failures <- err
					return
				}
				if counting.Load() {
					*mine = append(*mine, float64(time.Since(start).Nanoseconds())/1e6)
				}
			}
		}(&latencies[i])
	}
	defer func() { // on a failure, calls still in flight end at once
		stop.Store(true)
		conn.Close()
		callers.Wait()
	}()
	select {
	case err := <-failures:
		return fmt.Errorf("a call failed: %w", err)
	case <-time.After(warm):
	}
	counting.Store(true)
	cpu, start := cpuSeconds(), time.Now()
	select {
	case err := <-failures:
		return fmt.Errorf("a call failed: %w", err)
	case <-time.After(s.duration):
	}
	counting.Store(false)
	elapsed, cpu := time.Since(start).Seconds(), cpuSeconds()-cpu
	stop.Store(true)
	callers.Wait()
	var all []float64
	for _, mine := range latencies {
		all = append(all, mine...)
	}
	if len(all) == 0 {
		return fmt.Errorf("no call finished in %g s", s.duration.Seconds())
	}
	sort.Float64s(all)
	return json.NewEncoder(out).Encode(map[string]float64{
		"requests":   float64(len(all)),
		"p50_ms":     percentile(all, 50),
		"p99_ms":     percentile(all, 99),
		"rps":        float64(len(all)) / elapsed,
		"client_cpu": cpu / elapsed,
	})
}

func main() {
	s, err := parseArgs(os.Args[1:])
	if err == nil {
		err = run(s, warmUp, os.Stdout)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "twinbench-loadgen: %v\n", err)
		os.Exit(2)
	}
}
