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

# The two Go programs (the gateway's front and the bench's load generator): Go modules with their
# dependencies vendored, so that building and testing them needs Go and nothing from the network.
# The machine's Go only (GOTOOLCHAIN=local: no toolchain is downloaded behind your back); their
# go.mod says which (1.26 or later). Without it, the Python gateway serves the public port itself
# and the bench's load comes from Python: the same API, slower.
GO ?= $(shell command -v go || ls /usr/local/go/bin/go 2>/dev/null)
GO_ENV := GOTOOLCHAIN=local
GO_MODULES := services/gateway/front loadtests/loadgen
GO_BIN := $(CURDIR)/build/go-bin
# staticcheck, pinned; `make lint` installs it into $(GO_BIN) from the Go module proxy.
STATICCHECK_VERSION := v0.8.2
NATIVE := $(BIN)/twinbench-front $(BIN)/twinbench-loadgen
# Empty when Go can build the modules, else why not (worked out once, when first asked).
GO_MISSING = $(eval GO_MISSING := $(if $(GO),$(shell cd services/gateway/front \
	&& $(GO_ENV) $(GO) list -m 2>&1 >/dev/null | head -n 1 | tr -d '"$$'),no Go toolchain \
	(Go 1.26 or later: https://go.dev/dl/)))$(GO_MISSING)

native: $(STAMP)
	@if [ -n "$(GO_MISSING)" ]; then echo "note: $(GO_MISSING);" \
		"the gateway front and the Go load generator are not built"; \
	else $(MAKE) --no-print-directory $(NATIVE); fi

# Static binaries (no cgo), with no build paths in them.
$(BIN)/twinbench-front: $(wildcard services/gateway/front/*.go) services/gateway/front/go.mod services/gateway/front/vendor/modules.txt
	cd services/gateway/front && $(GO_ENV) CGO_ENABLED=0 $(GO) build -trimpath -o $(abspath $@) .

$(BIN)/twinbench-loadgen: $(wildcard loadtests/loadgen/*.go) loadtests/loadgen/go.mod loadtests/loadgen/vendor/modules.txt
	cd loadtests/loadgen && $(GO_ENV) CGO_ENABLED=0 $(GO) build -trimpath -o $(abspath $@) .

# Both modules' tests under the race detector (it needs cgo: a C compiler; CI has one), the fuzz
# tests' seed corpora with them.
.PHONY: go-test fuzz
go-test:
	@if [ -n "$(GO_MISSING)" ]; then echo "note: $(GO_MISSING); the Go tests are not run"; else \
		race=-race cgo=1; if ! command -v "$$($(GO) env CC)" >/dev/null; then race= cgo=0; \
			echo "note: no C compiler ($$($(GO) env CC)): the Go tests run without the race detector"; fi; \
		for m in $(GO_MODULES); do echo "go test $$race ./... in $$m"; \
			(cd $$m && $(GO_ENV) CGO_ENABLED=$$cgo $(GO) test $$race ./...) || exit 1; done; fi

# Each fuzz test beyond its seeds, FUZZTIME each (the model-name one asks .venv's Python too).
FUZZTIME ?= 30s
fuzz:
	cd services/gateway/front && for f in $$($(GO_ENV) $(GO) test -list '^Fuzz' . | grep '^Fuzz'); do \
		$(GO_ENV) $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) . || exit 1; done

$(GO_BIN)/staticcheck:
	GOBIN=$(GO_BIN) $(GO_ENV) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

demo: venv
	$(BIN)/twinbench compare

up: venv
	$(BIN)/twinbench up

test: venv go-test
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy  # the package and services/, as [tool.mypy] in pyproject.toml says
	@if [ -n "$(GO_MISSING)" ]; then echo "note: $(GO_MISSING); the Go code is not linted"; else \
		$(MAKE) --no-print-directory $(GO_BIN)/staticcheck || exit 1; \
		unformatted=$$(find $(GO_MODULES) -path '*/vendor' -prune -o -name '*.go' -print | xargs $$(dirname $(GO))/gofmt -l); \
		test -z "$$unformatted" || { echo "not gofmt'd: $$unformatted"; exit 1; }; \
		for m in $(GO_MODULES); do (cd $$m && $(GO_ENV) $(GO) vet ./... && $(GO_ENV) $(GO_BIN)/staticcheck ./...) || exit 1; done; fi

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
