# Set-up-from-nothing commands: `make test` creates .venv when missing, installs the package with its
# test extras and runs the whole suite on the CPU; `make demo` runs `lav2 demo --workdir demo_out`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export JAX_PLATFORMS := cpu

.PHONY: test install demo mutants clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e ".[test,tpu,eval,serve]"
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

clean:
	rm -rf $(VENV) build *.egg-info
