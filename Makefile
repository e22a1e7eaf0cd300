# Set-up-from-nothing commands: `make test` creates .venv when missing, installs the package with its
# test extras and runs the whole suite on the CPU; `make demo` runs `lav2 demo --workdir demo_out`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export JAX_PLATFORMS := cpu

.PHONY: test install demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e ".[test,tpu,eval,serve]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

# The method end to end on embedded data (about 2 minutes on 2 quiet cores): report in demo_out/report.md.
demo: $(STAMP)
	$(VENV)/bin/lav2 demo --workdir demo_out

clean:
	rm -rf $(VENV) build *.egg-info
