package main

import (
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func writeMetrics(m *frontMetrics) string {
	var out strings.Builder
	m.write(&out)
	return out.String()
}

// sample is the value of the sample line that starts with `series ` in a text exposition.
func sample(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if value, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no %s in\n%s", series, text)
	return 0
}

func TestMetricsCountPerServedModelAndLumpMadeUpNames(t *testing.T) {
	m := newMetrics(newGuard(guardConfig{maxConnections: 1}))
	m.request("lenet5-torch-onnx", true, 2*time.Millisecond, time.Millisecond)
	m.request("lenet5-torch-onnx", false, 3*time.Millisecond, 0)
	for _, name := range []string{"x-torch-onnx", "y-torch-onnx", "z-tf-onnx"} {
		m.request(name, false, time.Millisecond, 0) // never served: no series of its own
	}
	m.frame("lenet5-torch-onnx", 1)
	m.frame("lenet5-torch-onnx", 3)
	m.frame("lenet5-torch-onnx", 300)
	runtime.GC() // the live heap is what the last collection found
	text := writeMetrics(m)
	for series, want := range map[string]float64{
		`nv_inference_request_success_total{model="lenet5-torch-onnx"}`:          1,
		`nv_inference_request_failure_total{model="lenet5-torch-onnx"}`:          1,
		`nv_inference_request_failure_total{model="(other)"}`:                    3,
		`nv_inference_request_duration_us_total{model="lenet5-torch-onnx"}`:      5000,
		`nv_inference_queue_duration_us_total{model="lenet5-torch-onnx"}`:        1000,
		`twinbench_front_frame_size_bucket{model="lenet5-torch-onnx",le="1.0"}`:  1,
		`twinbench_front_frame_size_bucket{model="lenet5-torch-onnx",le="4.0"}`:  2,
		`twinbench_front_frame_size_bucket{model="lenet5-torch-onnx",le="+Inf"}`: 3,
		`twinbench_front_frame_size_sum{model="lenet5-torch-onnx"}`:              304,
		`twinbench_front_connections`:                                            0,
	} {
		if got := sample(t, text, series); got != want {
			t.Errorf("%s = %g, want %g", series, got, want)
		}
	}
	if strings.Contains(text, "x-torch-onnx") {
		t.Error("a name never served has a series")
	}
	if sample(t, text, "go_goroutines") < 1 || sample(t, text, "twinbench_front_heap_live_bytes") <= 0 {
		t.Error("no goroutines or live heap")
	}
	if sample(t, text, "twinbench_front_resident_memory_bytes") < 1<<20 {
		t.Error("a resident size under 1 MiB")
	}
}

func TestMetricsAreServedOverHTTP(t *testing.T) {
	m := newMetrics(newGuard(guardConfig{maxConnections: 1}))
	port, err := m.serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reply, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer reply.Body.Close()
	body, _ := io.ReadAll(reply.Body)
	if !strings.HasPrefix(reply.Header.Get("Content-Type"), "text/plain; version=0.0.4") ||
		!strings.Contains(string(body), "# TYPE twinbench_front_heap_live_bytes gauge") {
		t.Fatalf("%s\n%s", reply.Header, body)
	}
	collected, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics?gc=1")
	if err != nil {
		t.Fatal(err)
	}
	collected.Body.Close()
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	if stats.NumGC < 2 || collected.StatusCode != http.StatusOK {
		t.Fatalf("%d collections, status %d", stats.NumGC, collected.StatusCode)
	}
	if _, err := m.serve("127.0.0.1:" + strconv.Itoa(port)); err == nil {
		t.Fatal("a second listener on a taken port")
	}
}
