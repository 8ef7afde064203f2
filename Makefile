# rmota: host-MCU OTA over ESP-AT RainMaker.
# `make demo` runs a full host OTA on the desktop; `make test` runs the test suite.
# Both create the project's own virtual environment (.venv) on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench faults mpy clean

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest host_tests -q

bench: $(STAMP)
	$(PY) tools/bench.py

# The package compiled for a board (build/mpy/rmota/*.mpy and its package.json for
# `mpremote mip install ./build/mpy/package.json`, docs/real-board.md).
mpy: $(STAMP)
	$(PY) tools/mkmpy.py

# Fault campaign (issue 3): `make faults SEEDS=2000`, `make faults EXHAUSTIVE=1`,
# `RUNTIME=micropython|cpython` (default both), `SEED=n` replays one seed verbosely,
# `SETTINGS='{"faithful": true}'` board settings for every scenario.
faults: $(STAMP)
	@$(PY) tools/faults.py $(if $(SEEDS),--seeds $(SEEDS)) $(if $(START),--start $(START)) \
		$(if $(RUNTIME),--runtime $(RUNTIME)) $(if $(SEED),--seed $(SEED)) \
		$(if $(filter-out 0,$(EXHAUSTIVE)),--exhaustive)

clean:
	rm -rf $(VENV) build out .pytest_cache .hypothesis .ruff_cache
