"""Runs pytest on one test file under `bazel test`, honouring Bazel's test protocol.

  pytest_main.py TEST_FILE [PYTEST_ARGS...]

- Sharding: when Bazel sets TEST_TOTAL_SHARDS / TEST_SHARD_INDEX, the collected test items are
  dealt round-robin and this shard keeps item i with i % TEST_TOTAL_SHARDS == TEST_SHARD_INDEX
  (round-robin rather than contiguous blocks so that a file's slow parametrizations, usually
  adjacent, spread over shards). TEST_SHARD_STATUS_FILE is touched to tell Bazel sharding is
  supported. A shard left without items passes (pytest would exit 5, "no tests collected").
- Results: JUnit XML to XML_OUTPUT_FILE; pytest's temporary directories (and matplotlib's
  config dir, the home being read-only) under TEST_TMPDIR.
- Runs from the runfiles copy of the workspace, so pytest.ini and the conftest.py files apply
  exactly as under `make test`.
"""
import os
import sys

import pytest

_NO_TESTS_COLLECTED = 5


class _ShardPlugin:
  """Deselects the collected items that belong to other shards."""

  def __init__(self, total, index):
    self.total = total
    self.index = index
    self.kept = 0

  # trylast: deal only what survives pytest's own selection (-k, -m), so that an empty shard is
  # recognised as such.
  @pytest.hookimpl(trylast=True)
  def pytest_collection_modifyitems(self, config, items):
    keep, drop = [], []
    for i, item in enumerate(items):
      (keep if i % self.total == self.index else drop).append(item)
    if drop:
      config.hook.pytest_deselected(items=drop)
    items[:] = keep
    self.kept = len(keep)


def main(argv):
  """Runs pytest on argv[1] with Bazel's sharding, XML and temp-dir conventions; exit code."""
  if len(argv) < 2:
    sys.stderr.write("usage: pytest_main.py TEST_FILE [PYTEST_ARGS...]\n")
    return 2
  test_file, extra = argv[1], argv[2:]
  if not os.path.isfile(test_file):
    sys.stderr.write(f"pytest_main.py: test file {test_file} not found in {os.getcwd()}\n")
    return 2
  args = [test_file, "-q", "-p", "no:cacheprovider"] + extra
  if os.environ.get("XML_OUTPUT_FILE"):
    args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
  if os.environ.get("TEST_TMPDIR"):
    args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    # The sandbox's home is read-only: matplotlib (imported by the evaluator and by Model
    # Garden) would warn on stderr in every process, breaking the one-line error checks of the
    # CLI tests. Its cache goes to the test's temp dir, inherited by the subprocesses.
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.environ["TEST_TMPDIR"], "matplotlib"))

  plugins = []
  shard = None
  total = int(os.environ.get("TEST_TOTAL_SHARDS", "1"))
  if total > 1:
    index = int(os.environ["TEST_SHARD_INDEX"])
    shard = _ShardPlugin(total, index)
    plugins.append(shard)
    status = os.environ.get("TEST_SHARD_STATUS_FILE")
    if status:
      with open(status, "a"):
        pass
    print(f"pytest_main.py: shard {index + 1} of {total}")

  code = pytest.main(args, plugins=plugins)
  if code == _NO_TESTS_COLLECTED and shard is not None and shard.kept == 0:
    return 0
  return int(code)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
