# RSFT: one target per stage. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/demo.yaml
ARGS ?=

.PHONY: help setup debian venv demo experiment test lint format prepare score select finetune evaluate report bench clean

help:
	@echo "make demo       set up, then run the pipeline on recipes/demo.yaml"
	@echo "make test       set up, then run the tests"
	@echo "make prepare RECIPE=recipes/demo.yaml [ARGS='--set prepare.workers=1']"
	@echo "make score RECIPE=recipes/demo.yaml; make select RECIPE=recipes/demo.yaml"
	@echo "make finetune RECIPE=recipes/demo.yaml [ARGS='--subset random --resume']"
	@echo "make evaluate RECIPE=recipes/demo.yaml [ARGS='--model PATH --name NAME']"
	@echo "make report RECIPE=recipes/demo.yaml   (data/<recipe>/report/report.html)"
	@echo "make experiment RECIPE=recipes/demo.yaml   every stage, every selector x seeds + budget sweep"
	@echo "make bench      benchmarks against the standard tools (after make demo; about 25 min)"
	@echo "                -> benchmarks/RESULTS.md, benchmarks/results.json [ARGS='--only flops']"
	@echo "make lint       ruff"

setup: debian venv

debian:
	@bash scripts/setup-debian.sh

venv: $(VENV)/.installed

# torch is installed in the same pip command, pinned by the constraints file, so that no
# dependency can pull a newer (CUDA) build. --no-compile: pip would otherwise compile every
# installed module to bytecode (about a minute on 2 cores, most of it never imported); Python
# compiles what it imports, and caches it unless PYTHONDONTWRITEBYTECODE is set.
$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --no-compile -c requirements/constraints.txt "torch==2.13.0" -e ".[dev]"
	$(VENV)/bin/pip check
	touch $@

# make demo runs the quick comparison (experiment.quick_systems, one seed) to stay within
# its time; make experiment runs every selector over seeds plus the budget sweep.
demo: setup
	$(PY) -m pipeline run recipes/demo.yaml --quick
	@echo "demo: a quick comparison (rsft and random, one seed, read on the target test and real"
	@echo "      speech; experiment.quick_* in the recipe)."
	@echo "      make experiment RECIPE=recipes/demo.yaml trains every selector over 3 seeds plus a budget sweep."

# every stage (each skips what is done), then every selector: wer_filter needs the pool's
# greedy hypotheses, which the demo recipe leaves out for make demo's time
experiment: setup
	$(PY) -m pipeline run $(RECIPE) --set score.hypotheses=true $(ARGS)

# the tests also render the report's HTML in headless chromium
test: setup
	@bash scripts/setup-debian.sh chromium asterisk-core-sounds-es-wav asterisk-core-sounds-es \
		asterisk-core-sounds-fr-wav asterisk-core-sounds-fr fortunes-es fortunes-br
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

prepare: setup
	$(PY) -m pipeline prepare $(RECIPE) $(ARGS)

score: setup
	$(PY) -m pipeline score $(RECIPE) $(ARGS)

select: setup
	$(PY) -m pipeline select $(RECIPE) $(ARGS)

finetune: setup
	$(PY) -m pipeline finetune $(RECIPE) $(ARGS)

evaluate: setup
	$(PY) -m pipeline evaluate $(RECIPE) $(ARGS)

report: setup
	$(PY) -m pipeline report $(RECIPE) $(ARGS)

# every benchmark in its own process, on the demo's data (make demo first)
bench: setup
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf data/
