# tal_tf: `make demo` and `make test` set up everything on a fresh machine with Python 3.11.
# The environment step is idempotent: it re-runs only when a requirements file changes.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tal_tf-env-stamp
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: env protos test demo bench clean

env: $(STAMP)

$(STAMP): env/requirements.txt env/requirements-nodeps.txt env/lock.txt setup.py
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "tal_tf needs Python 3.11, found " + sys.version' || exit 1
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c env/lock.txt -r env/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r env/requirements-nodeps.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m tal_tf.utils.proto_compiler >/dev/null
	touch $(STAMP)

protos: env
	$(PY) -m tal_tf.utils.proto_compiler

test: env
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

demo: env
	$(PY) -m tal_tf.demo --output_dir=$(DEMO_DIR)

clean:
	rm -rf $(VENV) build *.egg-info tal_tf/protos/*_pb2.py .pytest_cache
