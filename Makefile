# Set-up-from-nothing commands: `make test` creates .venv when missing, installs the package with its
# test extras and runs the whole suite on the CPU; `make demo` runs `lav2 demo --workdir demo_out`.
# `make docs` builds the documentation site into site/ (`mkdocs build --strict`), `make docs-serve` serves it on
# 127.0.0.1:8000, `make figures` regenerates the committed figures under docs/img/ (docs/figures/*.py).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export JAX_PLATFORMS := cpu

.PHONY: test install demo mutants docs docs-serve figures clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e ".[test,tpu,eval,serve,docs]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs -n 2 --dist loadfile $(PYTEST_ARGS)

# The method end to end on embedded data (about 2 minutes on 2 quiet cores): report in demo_out/report.md.
demo: $(STAMP)
	$(VENV)/bin/lav2 demo --workdir demo_out

# Deliberate bugs (tests/mutation/catalog.py), each applied to a temporary copy of the checkout and run against the
# tests that claim to catch it; fails unless every one is caught. Not part of `make test`. E.g.
# `make mutants MUTANTS_ARGS="--only splice-off-by-one"`, `MUTANTS_ARGS=--list`.
mutants: $(STAMP)
	$(PY) tests/mutation/run.py $(MUTANTS_ARGS)

# The reference pages (CLI, config fields, API) are generated from the code at build time (docs/hooks/).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

# DEMO=demo_out reuses that workdir's report.png; without it the demo figure is plotted from the committed sample.
figures: $(STAMP)
	$(PY) docs/figures/method.py
	$(PY) docs/figures/sizing.py
	$(PY) docs/figures/demo_report.py $(if $(DEMO),--workdir $(DEMO))

clean:
	rm -rf $(VENV) build *.egg-info site
