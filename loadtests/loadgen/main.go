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
	"fmt"
	"io/ioutil"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

const (
	modelInfer = "/inference.GRPCInferenceService/ModelInfer"
	warmUp     = time.Second
)

// rawCodec sends the request file as it is and keeps the reply as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error)   { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(d []byte, v interface{}) error { *(v.(*[]byte)) = d; return nil }
func (rawCodec) Name() string                            { return "proto" }

func cpuSeconds() float64 {
	var u syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return time.Duration(u.Utime.Nano() + u.Stime.Nano()).Seconds()
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "twinbench-loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	if len(os.Args) != 5 {
		fail("usage: twinbench-loadgen ADDRESS REQUEST_FILE CONCURRENCY SECONDS")
	}
	request, err := ioutil.ReadFile(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	concurrency, err1 := strconv.Atoi(os.Args[3])
	seconds, err2 := strconv.ParseFloat(os.Args[4], 64)
	if err1 != nil || err2 != nil || concurrency < 1 || seconds <= 0 {
		fail("CONCURRENCY is a positive integer and SECONDS a positive number")
	}
	conn, err := grpc.Dial(os.Args[1], grpc.WithInsecure(), grpc.WithDefaultCallOptions(
		grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		fail("%v", err)
	}
	var counting, stop int32
	latencies := make([][]float64, concurrency)
	failures := make(chan error, concurrency)
	var callers sync.WaitGroup
	for i := range latencies {
		callers.Add(1)
		go func(mine *[]float64) {
			defer callers.Done()
			for atomic.LoadInt32(&stop) == 0 {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				in, out := request, []byte(nil)
				err := conn.Invoke(ctx, modelInfer, &in, &out)
				cancel()
				if err != nil {
					failures <- err
					return
				}
				if atomic.LoadInt32(&counting) == 1 {
					*mine = append(*mine, float64(time.Since(start).Nanoseconds())/1e6)
				}
			}
		}(&latencies[i])
	}
	time.Sleep(warmUp)
	atomic.StoreInt32(&counting, 1)
	cpu, start := cpuSeconds(), time.Now()
	select {
	case err := <-failures:
		fail("a call failed: %v", err)
	case <-time.After(time.Duration(seconds * float64(time.Second))):
	}
	atomic.StoreInt32(&counting, 0)
	elapsed, cpu := time.Since(start).Seconds(), cpuSeconds()-cpu
	atomic.StoreInt32(&stop, 1)
	callers.Wait()
	var all []float64
	for _, mine := range latencies {
		all = append(all, mine...)
	}
	if len(all) == 0 {
		fail("no call finished in %g s", seconds)
	}
	sort.Float64s(all)
	percentile := func(p float64) float64 { return all[int(p/100*float64(len(all)-1))] }
	json.NewEncoder(os.Stdout).Encode(map[string]float64{
		"requests":   float64(len(all)),
		"p50_ms":     percentile(50),
		"p99_ms":     percentile(99),
		"rps":        float64(len(all)) / elapsed,
		"client_cpu": cpu / elapsed,
	})
}
