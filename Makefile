# modfsm developer entry points. `make demo` and `make test` are all a fresh
# machine needs: both create .venv and install everything on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-llmc llmc-exact mutation clean spin verify graphviz chromium docs site

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the local CPU wheel. An unpinned torch would
	# pull several GB of CUDA packages from the registry.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,demo,diagrams,accelerate,transformers,lightning,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/modfsm run

# mypy reads the two folders under their import names (modfsm.engine, modfsm.modifiers)
# through links in build/lint: it does not follow the editable install's finder.
LINT_TREE := build/lint/modfsm

$(LINT_TREE):
	mkdir -p $(LINT_TREE)
	ln -sfn ../../../engine $(LINT_TREE)/engine
	ln -sfn ../../../modifiers $(LINT_TREE)/modifiers

lint: $(STAMP) $(LINT_TREE)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The Spin model checker and a C compiler, for the model checks in `make test`
# and `make verify`: installed with apt-get when missing (as root, or through sudo).
APT_INSTALL := env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

spin:
	@missing=""; \
	command -v spin >/dev/null 2>&1 || missing=" spin"; \
	command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	  else echo "model checking needs:$$missing, and installing it needs root. To fix, install spin (apt-get install spin) and gcc." >&2; exit 1; fi; \
	  echo "installing$$missing for model checking (apt-get install$$missing)"; \
	  $$sudo $(APT_INSTALL) $$missing >/dev/null \
	    || { $$sudo apt-get update -qq && $$sudo $(APT_INSTALL) $$missing >/dev/null; } \
	    || { echo "could not install$$missing. To fix, install spin (apt-get install spin) and gcc." >&2; exit 1; }; \
	fi

# Graphviz's dot program, for `modfsm diagram --format svg|png` and the committed SVGs
# under docs/diagrams: installed with apt-get when missing (as root, or through sudo).
graphviz:
	@if ! command -v dot >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	  else echo "diagrams as svg or png need graphviz's dot, and installing it needs root. To fix, install graphviz (apt-get install graphviz)." >&2; exit 1; fi; \
	  echo "installing graphviz for svg and png diagrams (apt-get install graphviz)"; \
	  $$sudo $(APT_INSTALL) graphviz >/dev/null \
	    || { $$sudo apt-get update -qq && $$sudo $(APT_INSTALL) graphviz >/dev/null; } \
	    || { echo "could not install graphviz. To fix, install graphviz (apt-get install graphviz)." >&2; exit 1; }; \
	fi

# Chromium, for the documentation site's browser tests (tests/site, marked `browser`):
# Debian's package, installed with apt-get when missing (as root, or through sudo).
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	  else echo "the site's browser tests need chromium, and installing it needs root. To fix, install chromium (apt-get install chromium)." >&2; exit 1; fi; \
	  echo "installing chromium for the site's browser tests (apt-get install chromium)"; \
	  $$sudo $(APT_INSTALL) chromium >/dev/null \
	    || { $$sudo apt-get update -qq && $$sudo $(APT_INSTALL) chromium >/dev/null; } \
	    || { echo "could not install chromium. To fix, install chromium (apt-get install chromium)." >&2; exit 1; }; \
	fi

# MODFSM_REQUIRE_SPIN / MODFSM_REQUIRE_GRAPHVIZ / MODFSM_REQUIRE_BROWSER: tests that need
# Spin, graphviz's dot or Chromium fail, rather than skip, without them.
test: lint spin graphviz chromium
	MODFSM_REQUIRE_SPIN=1 MODFSM_REQUIRE_GRAPHVIZ=1 MODFSM_REQUIRE_BROWSER=1 $(BIN)/python -m pytest

# Regenerate the diagrams committed under docs/diagrams (mermaid, dot, svg) from the
# declared machines; a test fails while they are stale.
docs: $(STAMP) graphviz
	$(BIN)/python -m modfsm.engine.tools.diagrams docs/diagrams

# The documentation site (Sphinx, furo theme; sources in docs/site) into build/site:
# open build/site/index.html. Every warning is an error; the diagrams are drawn at build
# time by the modfsm-diagram directive (modfsm.engine.tools.sphinx).
site: $(STAMP) graphviz
	$(BIN)/sphinx-build -W --keep-going -b html docs/site build/site

# Structural proofs and Spin model checks of the declared machines, as one table.
verify: $(STAMP) spin
	$(BIN)/modfsm verify

# Mutation testing of the lifecycle, stage, session and factory modules (mutmut;
# configured in pyproject.toml, results in specs/verification.md). Not part of
# `make test`: a full run takes hours on 2 cores. Results are kept in mutants/,
# so a second run only tests mutants not yet tested or whose function changed.
MUTATION_STAMP := $(VENV)/.installed-mutation
MUTATION_JOBS  ?= 2

$(MUTATION_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,demo,mutation]'
	touch $(MUTATION_STAMP)

# mutmut names mutants by file path and imports them from mutants/src, so it reads
# the two folders through links named as they import: src/modfsm/{engine,modifiers}.
MUTATION_TREE := src/modfsm

$(MUTATION_TREE):
	mkdir -p $(MUTATION_TREE)
	ln -sfn ../../engine $(MUTATION_TREE)/engine
	ln -sfn ../../modifiers $(MUTATION_TREE)/modifiers

mutation: $(MUTATION_STAMP) $(MUTATION_TREE)
	HYPOTHESIS_PROFILE=mutation $(BIN)/mutmut run --max-children $(MUTATION_JOBS)
	$(BIN)/python -m tests.mutmut_report

bench: $(STAMP)
	$(BIN)/python -m benchmarks.dispatch
	$(BIN)/python -m benchmarks.session_overhead
	$(BIN)/python -m benchmarks.compression
	$(BIN)/python -m benchmarks.distributed

# The anchor (optional, not part of `make bench`): llm-compressor 0.14.0.1 in its own
# venv, with the same torch 2.13.0 CPU wheel and modfsm itself, then the same 10
# modifiers through both sessions, interleaved (benchmarks/llmc_anchor.py).
LLMC_VENV  := .venv-llmc
LLMC_STAMP := $(LLMC_VENV)/.installed

$(LLMC_STAMP): pyproject.toml setup.py
	test -x $(LLMC_VENV)/bin/python || $(PYTHON) -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(LLMC_VENV)/bin/python -m pip install --quiet llmcompressor==0.14.0.1 -e .
	touch $(LLMC_STAMP)

bench-llmc: $(LLMC_STAMP)
	$(LLMC_VENV)/bin/python -m benchmarks.llmc_anchor

# Exactness against the real llm-compressor 0.14.0.1 (optional, in the same venv): 100,000
# random lifecycle traces per table, compared call by call (tests/llmc_differential.py).
llmc-exact: $(LLMC_STAMP)
	$(LLMC_VENV)/bin/python -m tests.llmc_differential --table calibration
	$(LLMC_VENV)/bin/python -m tests.llmc_differential --table lifecycle --without-calibration
	$(LLMC_VENV)/bin/python -m tests.llmc_quantization_differential

clean:
	rm -rf $(VENV) $(LLMC_VENV) build src demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
