# Two commands do all set-up on a fresh machine:  make demo  and  make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Ray binds to 127.0.0.1 instead of the machine's interface address (tests and demo stay on loopback)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
# the demo and tests never reach for the Hugging Face hub
export HF_HUB_OFFLINE := 1

.PHONY: venv demo lint test test-fast cluster-deps cluster-test clean

venv: $(STAMP)

# then the project itself, editable: segcore/segtune importable from anywhere, and its console scripts
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, pytorch_lightning, segmentation_models_pytorch, ray.tune, optuna"
	touch $(STAMP)

# The main job on its embedded default: a small sweep (8 trials, ASHA) on a generated stand-in dataset of 640
# images (288 train, 32 validation, 320 test), about three minutes on 2 CPU cores
DEMO_FLAGS := --synthetic --synthetic-images 640 --data-dir data/demo --space demo --num-samples 8 \
	--max-epochs 8 --grace-period 2 --reduction-factor 2
demo: $(STAMP)
	$(PY) tune_main.py $(DEMO_FLAGS) --name demo-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(PY) -m ruff check .

# The suite in TEST_WORKERS processes (pytest-xdist): tests sharing a module's fixture (a sweep, a cluster) stay in
# one (xdist_group). The tests are sized for 2 cores: more workers than cores only makes each test slower.
# The slowest 15 tests are listed at the end of each run: where the suite's time goes, in every CI log.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

test: lint
	$(PYTEST) -rs tests

# The inner loop: config, data, model, spaces, settings, results and bad input, without sweeps (about 1 minute)
test-fast: lint
	$(PYTEST) -m "not slow" tests

# The cluster recipes run for real (tests/cluster/, skipped by `make test`): README's `ray start` recipe on two hosts
# (network namespaces), `ray job submit`, a lost host, sweep.sbatch on a SLURM of the tests' own. They need root;
# the Debian packages are installed here when missing. pytest's summary says what ran, and what was skipped and why.
cluster-test: $(STAMP) cluster-deps
	SEGSWEEP_CLUSTER_TESTS=1 $(PYTEST) -rA tests/cluster

CLUSTER_PACKAGES := ip:iproute2 unshare:util-linux sbatch:slurm-wlm munged:munge
cluster-deps:
	@missing=""; for c in $(CLUSTER_PACKAGES); do command -v $${c%%:*} >/dev/null || missing="$$missing $${c#*:}"; done; \
	if [ -z "$$missing" ]; then echo "cluster-deps: all there ($(foreach c,$(CLUSTER_PACKAGES),$(lastword $(subst :, ,$(c)))))"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "cluster-deps: missing$$missing, and no root or apt-get to install them: the tests that need them are skipped"; \
	else echo "cluster-deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
		>/dev/null || echo "cluster-deps: installing$$missing failed: the tests that need them are skipped"; fi

clean:
	rm -rf $(VENV) .pytest_cache outputs results
