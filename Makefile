# twinbench: `make demo` runs the whole comparison locally; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv native demo up test lint protos check-protos clean

venv: $(STAMP) native

$(STAMP): requirements/*.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -r requirements/dev.txt -c requirements/lock.txt
	$(BIN)/pip install --no-deps -e .
	@# The compose specification's JSON schema, for the deploy tests (shipped in docker-compose 1.29.2).
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/share docker-compose==1.29.2
	$(BIN)/python -c "import glob, zipfile; \
		z = zipfile.ZipFile(glob.glob('$(VENV)/share/docker_compose-1.29.2-*.whl')[0]); \
		open('$(VENV)/share/compose_spec.json', 'wb').write(z.read('compose/config/compose_spec.json'))"
	touch $@

# The two Go programs (the gateway's front and the bench's load generator), built against Debian's
# Go packages (golang-go, golang-google-grpc-dev) with no network. Without them, the Python gateway
# serves the public port itself and the bench's load comes from Python: the same API, slower.
GO_SOURCES := /usr/share/gocode/src/google.golang.org/grpc
GO_ENV := GO111MODULE=off GOPATH=$(CURDIR)/build/gopath:/usr/share/gocode GOCACHE=$(CURDIR)/build/gocache
NATIVE := $(BIN)/twinbench-front $(BIN)/twinbench-loadgen

native: $(STAMP)
	@if command -v go >/dev/null && [ -d $(GO_SOURCES) ]; then $(MAKE) --no-print-directory $(NATIVE); \
	else echo "note: no Go toolchain with gRPC (Debian: golang-go golang-google-grpc-dev);" \
		"the gateway front and the Go load generator are not built"; fi

$(BIN)/twinbench-front: services/gateway/front/*.go
	$(GO_ENV) go build -o $@ ./services/gateway/front

$(BIN)/twinbench-loadgen: loadtests/loadgen/*.go
	$(GO_ENV) go build -o $@ ./loadtests/loadgen

demo: venv
	$(BIN)/twinbench compare

up: venv
	$(BIN)/twinbench up

test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy  # the package and services/, as [tool.mypy] in pyproject.toml says
	@if command -v go >/dev/null && [ -d $(GO_SOURCES) ]; then \
		test -z "$$(gofmt -l services loadtests)" || { gofmt -l services loadtests; exit 1; }; \
		$(GO_ENV) go vet ./services/gateway/front ./loadtests/loadgen; fi

# The one command that makes the committed gRPC stubs.
protos: venv
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/twinbench/api/trainer.proto protos/twinbench/api/inference.proto

# Every image, with docker or podman: `make images DEVICE=cpu` for hosts without a GPU; with no
# registry, on a local stand-in base image (deploy/build-images.sh lists the settings).
.PHONY: images
images:
	deploy/build-images.sh

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
