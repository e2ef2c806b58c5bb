# tal_tf: `make demo` and `make test` set up everything on a fresh machine with Python 3.11;
# `make bazel-test` also installs Bazel (Debian 12 packages) and runs the suite under it.
# The environment step is idempotent: it re-runs only when a requirements file changes.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tal_tf-env-stamp
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (tests/conftest.py keeps each file on one worker).
TEST_WORKERS ?= 2

.PHONY: env protos test demo bench clean bazel-setup bazel-build bazel-test bazel-smoke

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
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: env
	$(PY) -m tal_tf.demo --output_dir=$(DEMO_DIR)

# Bazel (build_defs/README.md): Debian's Bazel 4.2.3 + the venv above as its Python.
# TAL_TF_PYTHON=/path/to/venv/bin/python uses an existing pinned venv instead of making .venv.
BAZEL ?= bazel
BAZEL_TEST_ARGS ?=
ifdef TAL_TF_PYTHON
BAZEL_ENV :=
else
BAZEL_ENV := env
export TAL_TF_PYTHON := $(CURDIR)/$(PY)
endif

bazel-setup:
	bash build_defs/install_bazel.sh

bazel-build: bazel-setup $(BAZEL_ENV)
	$(BAZEL) build //...

bazel-test: bazel-build
	$(BAZEL) test //tests/... $(BAZEL_TEST_ARGS)

bazel-smoke: bazel-build
	$(BAZEL) test //tests:smoke $(BAZEL_TEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info tal_tf/protos/*_pb2.py tal_tf/protos/proto_sources.sha256 .pytest_cache
	if [ -L bazel-bin ]; then $(BAZEL) clean --expunge; fi
