# pneumolens developer tasks. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/chest_xray
PRESET ?= default
RUN    ?= runs/$(PRESET)

.PHONY: help setup browser run recipe test lint format bench lungs orientation clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch lies on this machine's disk; install it first so the
	# project's torch range is already satisfied and no CUDA build is pulled.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install pneumolens with its dev tools

run: setup  ## main job: train PRESET on DATA/train, evaluate once on DATA/test, write the HTML report
	$(VENV)/bin/pneumolens train --data $(DATA) --preset $(PRESET) --out $(RUN) --overwrite
	$(VENV)/bin/pneumolens evaluate --model $(RUN) --data $(DATA) --json $(RUN)/test_metrics.json --report $(RUN)/report

recipe: setup  ## rebuild the shipped model's whole recipe from scratch, evaluate once, print its table (30-60 min on 2 cores)
	$(PY) benchmarks/default_recipe.py --data $(DATA) --out runs/recipe

browser:  ## install Debian's headless Chromium for the browser test, if missing (needs root)
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  (sleep 10; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "WARNING: chromium could not be installed; the browser test will be skipped"; \
	else echo "NOTE: no chromium and not root: the browser test will be skipped"; fi

test: setup browser  ## run the test suite (reads a small subset of ../shared/data)
	$(PY) -m pytest -q -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: setup  ## ruff lint and format check; mypy on the service, config and audit trail
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src/pneumolens/service src/pneumolens/config.py src/pneumolens/monitoring/audit.py

format: setup  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: setup  ## performance table: train both presets from scratch, inference, explanations, cache (~17 min)
	$(PY) benchmarks/run.py --data $(DATA)

lungs: setup  ## retrain the lung segmenter from scratch (<= 15 min) and ship it in src/pneumolens/assets
	$(VENV)/bin/pneumolens train-lungs --data $(dir $(DATA))lung_masks --out runs/lungs
	cp runs/lungs/lungs.safetensors src/pneumolens/assets/lungs.safetensors

orientation: setup  ## retrain the mirrored- and inverted-film checks from scratch (~4 min) and ship them in src/pneumolens/assets
	$(VENV)/bin/pneumolens train-orientation --transform mirror --data $(DATA) --lung-masks $(dir $(DATA))lung_masks --out runs/orientation
	$(VENV)/bin/pneumolens train-orientation --transform invert --image-size 48 --data $(DATA) --lung-masks $(dir $(DATA))lung_masks --out runs/orientation
	cp runs/orientation/mirrored.safetensors runs/orientation/inverted.safetensors src/pneumolens/assets/

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
