// twinbench-loadgen: the V2 load generator of `twinbench bench serving`.
//
//	twinbench-loadgen [-rate R [-arrivals poisson|constant] [-seed N]] [-warm-up S]
//	                  [-latency-file F] ADDRESS REQUEST_FILE CONCURRENCY SECONDS
//
// sends the serialized ModelInferRequest in REQUEST_FILE over one connection and prints one JSON
// line: requests, p50_ms, p99_ms, rps, completed (every call that finished, warm-up included: what
// the server's CPU time is divided by), and client_cpu, the share of one CPU it used (near 1.0:
// the figures are the client's limit, not the server's). In Go because a Python gRPC client
// costs more per call than the gateway's front it measures.
//
// Without -rate it is a closed loop: CONCURRENCY callers each send the next request when the
// last one is answered. With -rate it is an open loop (openloop.go): requests fall due at R per
// second whatever the server does, each timed from when it was due, and CONCURRENCY bounds the
// requests in flight. -latency-file writes every counted latency (ms, float64, little-endian).
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
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
	concurrency int // closed loop: the callers; open loop: the most requests in flight
	duration    time.Duration
	warm        time.Duration
	rate        float64 // requests per second; 0: a closed loop
	arrivals    string  // open loop: "poisson" or "constant"
	seed        uint64  // open loop: the Poisson arrivals' seed
	latencyFile string
}

const usage = "usage: twinbench-loadgen [-rate R [-arrivals poisson|constant] [-seed N]] [-warm-up S]" +
	" [-latency-file F] ADDRESS REQUEST_FILE CONCURRENCY SECONDS"

func parseArgs(args []string) (settings, error) {
	flags := flag.NewFlagSet("twinbench-loadgen", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	rate := flags.Float64("rate", 0, "requests per second (an open loop); 0: a closed loop")
	arrivals := flags.String("arrivals", "poisson", "poisson or constant")
	seed := flags.Uint64("seed", 1, "the Poisson arrivals' seed")
	warm := flags.Float64("warm-up", warmUp.Seconds(), "seconds sent before counting")
	latencyFile := flags.String("latency-file", "", "where to write every counted latency")
	if err := flags.Parse(args); err != nil {
		return settings{}, fmt.Errorf("%v\n%s", err, usage)
	}
	args = flags.Args()
	if len(args) != 4 {
		return settings{}, errors.New(usage)
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
	if !(*rate >= 0) || math.IsInf(*rate, 0) || !(*warm >= 0) || (*arrivals != "poisson" && *arrivals != "constant") {
		return settings{}, errors.New("-rate and -warm-up are numbers from 0 up and -arrivals poisson or constant")
	}
	return settings{
		address: args[0], request: request, concurrency: concurrency,
		duration: time.Duration(seconds * float64(time.Second)), warm: time.Duration(*warm * float64(time.Second)),
		rate: *rate, arrivals: *arrivals, seed: *seed, latencyFile: *latencyFile,
	}, nil
}

func dial(address string) (*grpc.ClientConn, error) {
	return grpc.NewClient(address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
}

// connect dials and waits until the connection is up (or has failed: the first call then says
// why), so that no window starts before it: grpc.NewClient connects lazily, and the first call
// would otherwise carry the connect.
func connect(address string) (*grpc.ClientConn, error) {
	conn, err := dial(address)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn.Connect()
	for state := conn.GetState(); state != connectivity.Ready && state != connectivity.TransientFailure; state = conn.GetState() {
		if !conn.WaitForStateChange(ctx, state) {
			break
		}
	}
	return conn, nil
}

// writeLatencies writes the latencies (ms) to path as little-endian float64s ("" writes nothing).
func writeLatencies(path string, latencies []float64) error {
	if path == "" {
		return nil
	}
	data := make([]byte, 8*len(latencies))
	for i, v := range latencies {
		binary.LittleEndian.PutUint64(data[8*i:], math.Float64bits(v))
	}
	return os.WriteFile(path, data, 0o644)
}

// run measures for s.duration after s.warm and writes the one JSON line to out. A closed loop
// ends at the first failed call, with that call's error; an open loop (when s.rate is set)
// counts failed calls, and ends so only when none succeeded.
func run(s settings, out io.Writer) error {
	if s.rate > 0 {
		return runOpenLoop(s, time.Sleep, out)
	}
	conn, err := connect(s.address)
	if err != nil {
		return err
	}
	var counting, stop atomic.Bool
	var completed atomic.Int64
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
				completed.Add(1)
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
	case <-time.After(s.warm):
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
	if err := writeLatencies(s.latencyFile, all); err != nil {
		return err
	}
	sort.Float64s(all)
	return json.NewEncoder(out).Encode(map[string]float64{
		"requests":   float64(len(all)),
		"completed":  float64(completed.Load()),
		"p50_ms":     percentile(all, 50),
		"p99_ms":     percentile(all, 99),
		"rps":        float64(len(all)) / elapsed,
		"client_cpu": cpu / elapsed,
	})
}

func main() {
	s, err := parseArgs(os.Args[1:])
	if err == nil {
		err = run(s, os.Stdout)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "twinbench-loadgen: %v\n", err)
		os.Exit(2)
	}
}
