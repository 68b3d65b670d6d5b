# Two commands on a fresh machine: `make lab` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lab test test-browser bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp binder/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json  # no news pop-up
	touch $(STAMP)

## make lab: create .venv, install, open JupyterLab on the first lab
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) labs/00-welcome.ipynb

## make test: create .venv, install the test extras, run every test: the student labs (shipped
## without outputs) are run with --nbval-lax, the solutions' outputs are compared with --nbval
## Two workers (pytest-xdist); --dist loadfile keeps each file, so each notebook, on one worker.
XDIST := -n 2 --dist loadfile
test: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/browser $(XDIST)
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $(XDIST) labs/*.ipynb
	$(BIN)/python -m pytest --nbval --nbval-current-env -p no:cacheprovider $(XDIST) labs/solutions

## make test-browser: JupyterLab and Voila in headless Chromium (Debian's chromium, never a download)
test-browser: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[browser]'
	@command -v chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
		|| echo "chromium could not be installed here: the browser tests will skip and say so"
	$(BIN)/python -m pytest tests/browser -ra

## make fuzz: the seeded fuzzers ten times over (10,000 SDEI sequences, 5,000 fault schedules),
## on a fixed seed list of their own (docs/ROBUSTNESS.md, "Fuzzers")
fuzz: $(STAMP)
	APFLAB_FUZZ=long $(BIN)/python -m pytest tests/test_fuzz_sdei.py tests/test_fuzz_faults.py $(XDIST) -p no:cacheprovider -q

## make bench: speed figures as JSON, ratios against bare unicorn measured in the same run
bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
