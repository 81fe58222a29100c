# twinbench: `make demo` runs the whole comparison locally; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo up test lint protos check-protos clean

venv: $(STAMP)

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

demo: venv
	$(BIN)/twinbench compare

up: venv
	$(BIN)/twinbench up

test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The one command that makes the committed gRPC stubs.
protos: venv
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/twinbench/api/trainer.proto protos/twinbench/api/inference.proto

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
