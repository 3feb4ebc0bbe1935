# Two commands do all set-up on a fresh machine:
#   make demo   -- the main job on the embedded synthetic world
#   make test   -- the full test suite
# Both create .venv; a second run skips what is already installed (stamp files).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
DEMO_OUT ?= demo-out

.PHONY: demo test venv sysdeps clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: see ../shared/reference/environment.md (torch 2.13.0 has no working torchvision here).
$(STAMP)-torch: | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $@

$(STAMP)-project: pyproject.toml $(STAMP)-torch
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@

# Java (METEOR) and chromium (browser tests) come from Debian; install only when missing.
$(STAMP)-sysdeps:
	bash scripts/install_system_deps.sh
	touch $@

venv: $(STAMP)-project $(STAMP)-sysdeps

test: venv
	bash scripts/run_tests.sh

demo: venv
	$(BIN)/progemu demo --out $(DEMO_OUT)

bench: venv
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT)
