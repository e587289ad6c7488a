# The two commands of the README: `make generate` (set up + run the engine on the embedded
# model) and `make test` (set up + run every test, the slow real-model ones included).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROMPT ?= The Eiffel Tower is located in the city of

.PHONY: install generate test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

generate: install
	$(VENV)/bin/fleet generate --prompt "$(PROMPT)"

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/engine_throughput.py

clean:
	rm -rf $(VENV)
