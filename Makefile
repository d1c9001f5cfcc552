# Two entry points for a fresh machine (see README.md):
#   make ladder   set up .venv, run the proxy ladder E14 -> 18B, write the report
#   make test     set up .venv, ruff, then every test tier (unit, integration, slow)
#   make notebooks  execute every analysis/*.ipynb against the ladder's store (after make ladder)
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tools that otherwise write to shared places (home, /tmp) keep their state in the project.
export MLFLOW_DISABLE_TELEMETRY := true
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

.PHONY: setup ladder report notebooks test test-unit lint ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

ladder: setup
	$(PY) -m scaling.ladder --from E14 --to 18B $(ARGS)

report: setup
	$(PY) -m scaling.analysis report --experiment $(or $(EXPERIMENT),ladder-eva) --out reports/$(or $(EXPERIMENT),ladder-eva)

# Each notebook runs in analysis/ (as `jupyter lab analysis/` starts it) and finds the project's
# mlflow.db by walking up; the executed copies go to .cache/notebooks (the stored ones keep no
# outputs), the figures beside the report's in reports/<experiment>/.
notebooks: setup
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=900 \
		--output-dir $(CURDIR)/.cache/notebooks analysis/*.ipynb

lint: setup
	$(VENV)/bin/ruff check .

test-unit: setup
	$(PY) -m pytest -m "not integration and not slow" -q $(ARGS)

# pytest exits 5 when it collected nothing: that must fail CI, and it does since make
# propagates any non-zero status. Three workers on two cores: many integration tests wait on a
# scheduler, a server or a signal. Each worker that runs a SLURM test starts its own cluster on its
# own port block (tests/services/slurm.py::worker_port_base): pytest 9.2 ignores the group suffix
# xdist 3.8 puts on test ids, so --dist loadgroup would not keep them on one worker.
# The 20 slowest tests are printed at the end, to keep the suite honest about its time.
TEST_WORKERS ?= 3
test: lint
	$(PY) -m pytest -q --timeout 900 -n $(TEST_WORKERS) --dist load --durations=20 $(ARGS)

# prints each experiment's runs-table address, then serves the store with `mlflow ui`
ui: setup
	$(PY) -m scaling.tracking.ui --tracking-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

clean:
	rm -rf runs mlflow.db mlartifacts reports .cache data
