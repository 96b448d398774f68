# The README's two commands: `make demo` runs the main job, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck proto check-proto check-deploy bench fuzz clean

# Runtime: what `make demo` needs, both roles (the client with CPU torch, the server).
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "dpp needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build lies in the local wheel store; any other spec pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[client,server]'
	touch $(STAMP)

# Tests: linters, type checker, torchrec (CPU), a Prometheus server for the deploy checks and Ceph's radosgw.
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[client,server,dev,torchrec,png]'
	# torchrec without its requirements, which would pull the CUDA fbgemm-gpu (the extra has the CPU build).
	$(PY) -m pip install -q --no-deps torchrec==1.8.0
	# Prometheus (promtool and the server) for the deploy/ checks and tests/integration/test_prometheus.py.
	command -v prometheus >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus; }
	# Ceph's radosgw (a one-node cluster in memory, about 265 MB) as a real S3 endpoint for tests/integration/test_s3.py.
	{ command -v radosgw && command -v ceph-mon && command -v ceph-osd && command -v monmaptool; } >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends ceph-mon ceph-osd radosgw ceph-common; }
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/dpp demo $(DEMO_ARGS)

test: $(DEV_STAMP) check-proto lint typecheck check-deploy
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

proto: $(DEV_STAMP)
	PYTHON=$(PY) scripts/gen_proto.sh

check-proto: $(DEV_STAMP)
	PYTHON=$(PY) scripts/check_proto.sh

# deploy/: Prometheus config, alert rules and their unit tests, Kubernetes manifests (offline).
check-deploy: $(DEV_STAMP)
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

# Longer fuzzing than CI's bounded runs: FUZZ_SECONDS per target (tests/fuzz/run.py).
FUZZ_SECONDS ?= 300
fuzz: $(DEV_STAMP)
	for t in frame spec_yaml spec_proto filter journal token_file; do \
		PYTHONPATH=. $(PY) -m tests.fuzz.run $$t -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
