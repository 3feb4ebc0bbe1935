# Two commands do all set-up on a fresh machine:
#   make demo   -- the main job on the embedded synthetic world (installs only what it needs)
#   make test   -- the full test suite (also installs the extras and the test-only system packages)
# Both create .venv; a second run skips what is already installed (stamp files).
# After set-up, `. .venv/bin/activate` puts the `progemu` command on PATH (README, "Stage by stage").
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
DEMO_OUT ?= demo-out
# torch and torchvision pins, read from pyproject.toml (their one source): installed first, alone,
# because pip resolves the rest much faster once they are there.
TORCH_PINS := $(shell sed -n 's/^ *"\(torch\(vision\)\{0,1\}==[^"]*\)",*$$/\1/p' pyproject.toml)

.PHONY: demo test venv sysdeps clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP)-torch: pyproject.toml | $(BIN)/python
	@test -n "$(TORCH_PINS)" || { echo "Makefile: no torch==/torchvision== pins found in pyproject.toml" >&2; exit 1; }
	$(BIN)/pip install --quiet $(TORCH_PINS)
	touch $@

# the base install: every stage and the main job
$(STAMP)-project: pyproject.toml $(STAMP)-torch
	$(BIN)/pip install --quiet -e .
	touch $@

# the extras (curate's LLM client, serve's gradio, the test tools)
$(STAMP)-extras: pyproject.toml $(STAMP)-project
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@

# Debian packages, installed only when missing: Java for METEOR (the main job) ...
$(STAMP)-sysdeps-demo:
	bash scripts/install_system_deps.sh demo
	touch $@

# ... plus chromium + chromium-driver for the browser test (tests only)
$(STAMP)-sysdeps-test:
	bash scripts/install_system_deps.sh test
	touch $@

sysdeps: $(STAMP)-sysdeps-test

venv: $(STAMP)-extras $(STAMP)-sysdeps-test

test: venv
	bash scripts/run_tests.sh

demo: $(STAMP)-project $(STAMP)-sysdeps-demo
	$(BIN)/progemu demo --out $(DEMO_OUT)

bench: venv
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT)
