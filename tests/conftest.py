"""Shared pytest set-up: Keras 2 (tf_keras) everywhere, quiet TensorFlow logs."""
import os
import sys

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


# `make test` runs the suite on several pytest-xdist workers with `--dist loadgroup`. Tests of
# one file share module- and session-scoped fixtures (trained models, converted records), so a
# file goes to one worker as a whole; files marked `spread` (independent, minutes-long cases
# such as the contract test's models) deal each test out on its own. Without xdist the marks
# are inert.
def pytest_configure(config):
  config.addinivalue_line(
      "markers", "spread: the file's tests are independent and may run on different workers")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.get_closest_marker("xdist_group") is not None:
      continue
    path = item.nodeid.split("::", 1)[0]
    group = item.nodeid if item.get_closest_marker("spread") is not None else path
    item.add_marker(pytest.mark.xdist_group(group))
