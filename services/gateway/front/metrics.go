// The front's Prometheus metrics, in the text format, on a loopback port that the Python gateway
// scrapes and merges into its own /metrics (twinbench/metrics.py): the ModelInfer calls served
// here never reach Python. Names and help texts match the Python side's, so the two merge.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// otherModel labels requests for names never served: clients pick names, series cost memory.
const otherModel = "(other)"

var batchBuckets = []int{1, 2, 4, 8, 16, 32, 64, 128, 256}

type modelMetrics struct {
	success, failure    uint64
	durationNs, queueNs uint64
	frames              map[int]uint64 // requests in a frame -> frames sent
}

type frontMetrics struct {
	mu     sync.Mutex
	models map[string]*modelMetrics
	served map[string]bool
	guard  *guard
}

func newMetrics(g *guard) *frontMetrics {
	return &frontMetrics{models: map[string]*modelMetrics{}, served: map[string]bool{}, guard: g}
}

func (m *frontMetrics) of(name string) *modelMetrics {
	mm := m.models[name]
	if mm == nil {
		mm = &modelMetrics{frames: map[int]uint64{}}
		m.models[name] = mm
	}
	return mm
}

// request counts one ModelInfer served here.
func (m *frontMetrics) request(name string, ok bool, duration, queued time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok {
		m.served[name] = true
	}
	if !m.served[name] {
		name = otherModel
	}
	mm := m.of(name)
	if ok {
		mm.success++
	} else {
		mm.failure++
	}
	mm.durationNs += uint64(duration)
	mm.queueNs += uint64(queued)
}

// frame counts one frame of `size` requests sent to a trainer for the model.
func (m *frontMetrics) frame(name string, size int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.of(name).frames[size]++
}

func family(w io.Writer, name, kind, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

func (m *frontMetrics) write(w io.Writer) {
	m.mu.Lock()
	names := make([]string, 0, len(m.models))
	for n := range m.models {
		names = append(names, n)
	}
	sort.Strings(names)
	snapshot := map[string]modelMetrics{}
	for _, n := range names {
		mm := *m.models[n]
		frames := map[int]uint64{}
		for k, v := range mm.frames {
			frames[k] = v
		}
		mm.frames = frames
		snapshot[n] = mm
	}
	m.mu.Unlock()

	counter := func(name, help string, value func(modelMetrics) float64) {
		family(w, name+"_total", "counter", help)
		for _, n := range names {
			fmt.Fprintf(w, "%s_total{model=%q} %s\n", name, n, fmtFloat(value(snapshot[n])))
		}
	}
	counter("nv_inference_request_success", "Number of successful inference requests",
		func(s modelMetrics) float64 { return float64(s.success) })
	counter("nv_inference_request_failure", "Number of failed inference requests",
		func(s modelMetrics) float64 { return float64(s.failure) })
	counter("nv_inference_request_duration_us", "Cumulative end-to-end inference time (us)",
		func(s modelMetrics) float64 { return float64(s.durationNs) / 1000 })
	counter("nv_inference_queue_duration_us", "Cumulative time requests spent queued (us)",
		func(s modelMetrics) float64 { return float64(s.queueNs) / 1000 })

	family(w, "twinbench_front_frame_size", "histogram", "Requests per inference-link frame")
	for _, n := range names {
		var total, sum uint64
		for size, count := range snapshot[n].frames {
			total += count
			sum += uint64(size) * count
		}
		if total == 0 {
			continue
		}
		for _, bound := range batchBuckets {
			var below uint64
			for size, count := range snapshot[n].frames {
				if size <= bound {
					below += count
				}
			}
			fmt.Fprintf(w, "twinbench_front_frame_size_bucket{model=%q,le=\"%d.0\"} %d\n", n, bound, below)
		}
		fmt.Fprintf(w, "twinbench_front_frame_size_bucket{model=%q,le=\"+Inf\"} %d\n", n, total)
		fmt.Fprintf(w, "twinbench_front_frame_size_count{model=%q} %d\n", n, total)
		fmt.Fprintf(w, "twinbench_front_frame_size_sum{model=%q} %d\n", n, sum)
	}

	family(w, "twinbench_front_streams_refused_total", "counter",
		"Streams refused (REFUSED_STREAM): over a connection's stream limit or rate")
	fmt.Fprintf(w, "twinbench_front_streams_refused_total %d\n", m.guard.refused.Load())
	family(w, "twinbench_front_connections_closed_total", "counter",
		"Connections closed for opening streams after being refused")
	fmt.Fprintf(w, "twinbench_front_connections_closed_total %d\n", m.guard.closed.Load())
	family(w, "twinbench_front_connections_rejected_total", "counter",
		"Connections turned away over the connection limit")
	fmt.Fprintf(w, "twinbench_front_connections_rejected_total %d\n", m.guard.turned.Load())
	family(w, "twinbench_front_connections", "gauge", "Open client connections")
	fmt.Fprintf(w, "twinbench_front_connections %d\n", m.guard.connections())
	family(w, "go_goroutines", "gauge", "Number of goroutines that currently exist")
	fmt.Fprintf(w, "go_goroutines %d\n", runtime.NumGoroutine())
	family(w, "twinbench_front_heap_live_bytes", "gauge",
		"Heap memory the last garbage collection found live (bytes)")
	fmt.Fprintf(w, "twinbench_front_heap_live_bytes %d\n", heapLiveBytes())
	if rss, ok := residentBytes(); ok {
		family(w, "twinbench_front_resident_memory_bytes", "gauge", "The front's resident memory (bytes)")
		fmt.Fprintf(w, "twinbench_front_resident_memory_bytes %d\n", rss)
	}
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// residentBytes is the process's RSS, from /proc (Linux; elsewhere it is left out).
func residentBytes() (uint64, bool) {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(raw))
	if len(fields) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * uint64(os.Getpagesize()), true
}

// heapLiveBytes is what the last GC marked live: unlike RSS, it does not wait for the runtime to
// hand memory back to the system, so it says at once whether something is still held.
func heapLiveBytes() uint64 {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}

// serve serves /metrics on `address` and returns the port it took. /metrics?gc=1 collects garbage
// first. The address is loopback (the gateway scrapes it): nothing outside the host can ask.
func (m *frontMetrics) serve(address string) (int, error) {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return 0, fmt.Errorf("cannot listen on %s for metrics: %w", address, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") == "1" {
			// The live heap now, not as of the last collection (which may be minutes old on a
			// quiet front): twice, so that what only the pools' victim caches held is gone too.
			runtime.GC()
			runtime.GC()
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		m.write(w)
	})
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go server.Serve(listener)
	return listener.Addr().(*net.TCPAddr).Port, nil
}
