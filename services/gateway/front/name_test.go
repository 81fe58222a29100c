package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// pythonAnswer is what Python's protobuf read from some bytes: ok, and the name then.
type pythonAnswer struct {
	ok   bool
	name string
}

func parseAnswer(line string) (pythonAnswer, bool) {
	fields := strings.Fields(line)
	switch {
	case len(fields) == 1 && fields[0] == "err":
		return pythonAnswer{}, true
	case len(fields) >= 1 && fields[0] == "ok" && len(fields) <= 2:
		name := ""
		if len(fields) == 2 {
			raw, err := hex.DecodeString(fields[1])
			if err != nil {
				return pythonAnswer{}, false
			}
			name = string(raw)
		}
		return pythonAnswer{ok: true, name: name}, true
	}
	return pythonAnswer{}, false
}

// pythonCorpus is testdata/modelname_python.txt (made by make_modelname_corpus.py): requests and
// what Python read from each, so that CI checks the Go parse against Python without Python.
func pythonCorpus(t testing.TB) map[string]pythonAnswer {
	raw, err := os.ReadFile(filepath.Join("testdata", "modelname_python.txt"))
	if err != nil {
		t.Fatal(err)
	}
	corpus := map[string]pythonAnswer{}
	for i, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		data, rest, _ := strings.Cut(line, " ")
		if data == "-" {
			data = ""
		}
		b, err := hex.DecodeString(data)
		answer, ok := parseAnswer(rest)
		if err != nil || !ok {
			t.Fatalf("modelname_python.txt line %d: %q", i+1, line)
		}
		corpus[string(b)] = answer
	}
	return corpus
}

// pythonOracle asks the project's Python (its virtual environment's, or TWINBENCH_PYTHON) about
// bytes the corpus does not hold, the fuzzer's among them. Without it, only the corpus is checked.
type pythonOracle struct {
	mu  sync.Mutex
	in  io.WriteCloser
	out *bufio.Reader
}

var (
	oracleOnce sync.Once
	oracle     *pythonOracle
)

func repositoryRoot() string { return filepath.Join("..", "..", "..") }

func startOracle(t testing.TB) *pythonOracle {
	oracleOnce.Do(func() {
		python := os.Getenv("TWINBENCH_PYTHON")
		if python == "" {
			python = filepath.Join(repositoryRoot(), ".venv", "bin", "python")
		}
		if _, err := os.Stat(python); err != nil {
			return
		}
		root, err := filepath.Abs(repositoryRoot())
		if err != nil {
			return
		}
		cmd := exec.Command(python, filepath.Join("testdata", "modelname_oracle.py"))
		cmd.Env = append(os.Environ(), "PYTHONPATH="+root)
		cmd.Stderr = os.Stderr
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if cmd.Start() != nil {
			return
		}
		o := &pythonOracle{in: in, out: bufio.NewReader(out)}
		if _, ok := o.ask([]byte{}); !ok { // it could not import the stubs
			cmd.Process.Kill()
			cmd.Wait()
			return
		}
		oracle = o
	})
	if oracle == nil {
		t.Log("no Python with the project's stubs: checked against the committed corpus only")
	}
	return oracle
}

func (o *pythonOracle) ask(b []byte) (pythonAnswer, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	record := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	if _, err := o.in.Write(append(record, b...)); err != nil {
		return pythonAnswer{}, false
	}
	line, err := o.out.ReadString('\n')
	if err != nil {
		return pythonAnswer{}, false
	}
	return parseAnswer(line)
}

// checkAgainstPython: where Python reads a request, the front reads the same name from it (and
// so routes it to the trainer that will serve that name). Where Python refuses the bytes, the
// front may refuse them too (relayed: the gateway says INVALID_ARGUMENT) or route them (the
// trainer says INVALID_ARGUMENT): it never matters which.
func checkAgainstPython(t *testing.T, data []byte, py pythonAnswer) {
	name, ok := modelName(data)
	if py.ok && (!ok || name != py.name) {
		t.Fatalf("%x: Python reads %q, the front (%q, %v)", data, py.name, name, ok)
	}
}

func TestModelNameAgreesWithPythonOnTheCorpus(t *testing.T) {
	corpus := pythonCorpus(t)
	if len(corpus) < 20 {
		t.Fatalf("the corpus holds %d requests", len(corpus))
	}
	o := startOracle(t)
	for data, py := range corpus {
		checkAgainstPython(t, []byte(data), py)
		if o != nil { // the committed answers are still Python's
			if now, ok := o.ask([]byte(data)); !ok || now != py {
				t.Errorf("%x: Python now reads %+v, the corpus says %+v: run make_modelname_corpus.py", data, now, py)
			}
		}
	}
}

func TestModelName(t *testing.T) {
	name := func(s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), s)
	}
	cases := []struct {
		data []byte
		name string
		ok   bool
	}{
		{name("lenet5-torch-onnx"), "lenet5-torch-onnx", true},
		{append(name("a-torch-onnx"), name("b-tf-onnx")...), "b-tf-onnx", true},
		{nil, "", true},
		{[]byte("\xff\xff not protobuf"), "", false},
		{[]byte("\x0a\xff\xff\xff\xff\x0f"), "", false},
		{name("\xff"), "", false},
	}
	for _, c := range cases {
		got, ok := modelName(c.data)
		if got != c.name || ok != c.ok {
			t.Errorf("modelName(%x) = %q, %v; want %q, %v", c.data, got, ok, c.name, c.ok)
		}
	}
}

func FuzzModelName(f *testing.F) {
	corpus := pythonCorpus(f)
	for data := range corpus {
		f.Add([]byte(data))
	}
	o := startOracle(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		name, ok := modelName(data)
		if ok && !utf8.ValidString(name) {
			t.Fatalf("%x: a name that is not UTF-8: %q", data, name)
		}
		if !ok && name != "" {
			t.Fatalf("%x: a name with a refusal", data)
		}
		if py, known := corpus[string(data)]; known {
			checkAgainstPython(t, data, py)
		} else if o != nil {
			py, answered := o.ask(data)
			if !answered {
				t.Fatal("the Python oracle stopped answering")
			}
			checkAgainstPython(t, data, py)
		}
	})
}

// frameworkOfPython is twinbench's parse_model_name, transliterated: str.rpartition twice.
func frameworkOfPython(name string) string {
	rpartition := func(s string) (string, string) {
		i := strings.LastIndex(s, "-")
		if i < 0 {
			return "", s
		}
		return s[:i], s[i+1:]
	}
	model, rest := rpartition(name)
	model, framework := rpartition(model)
	if model == "" || framework == "" || rest == "" {
		return ""
	}
	return framework
}

func TestFrameworkOf(t *testing.T) {
	for name, want := range map[string]string{
		"lenet5-torch-onnx": "torch", "res-net-50-tf-savedmodel": "tf", "a-b-c": "b",
		"": "", "x": "", "torch-onnx": "", "-torch-onnx": "", "m--onnx": "", "m-torch-": "",
	} {
		if got := frameworkOf(name); got != want {
			t.Errorf("frameworkOf(%q) = %q, want %q", name, got, want)
		}
	}
}

func FuzzFrameworkOf(f *testing.F) {
	for _, s := range []string{"lenet5-torch-onnx", "a-b-c", "--", "-a-b", "a--b", "ä-ö-ü", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if got, want := frameworkOf(name), frameworkOfPython(name); got != want {
			t.Fatalf("frameworkOf(%q) = %q, Python's rule %q", name, got, want)
		}
	})
}
