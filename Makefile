# `make run`: set up and run the whole pipeline on the default dataset.
# `make test`: set up and run the tests. Both create .venv when it is missing.
# `make test-deploy`: the production path (Prefect server, worker, deployment run; ~3.5 min on 2 cores).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: run test test-deploy bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

.dvc/config:
	if git rev-parse --git-dir >/dev/null 2>&1; then $(PY) -m dvc init --quiet; else $(PY) -m dvc init --no-scm --quiet; fi

run: $(STAMP) .dvc/config
	$(VENV)/bin/tamis run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-deploy: $(STAMP)
	$(PY) -m pytest -m deploy $(PYTEST_ARGS)

bench: $(STAMP) .dvc/config
	$(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf data/raw data/validated data/audit data/corrected data/resampled data/truth data/fingerprint.json \
	       models metrics plots reports
