"""The pytest-xdist schedule of `make test` (tests/conftest.py), on a generated test tree run
by pytest in a subprocess with the suite's conftest as a plugin: a file's tests run on one
worker one after another (its module fixture is built once), a SPREAD file's tests are dealt
out to both workers, each worker takes its units costliest first (COSTS), and the conftest
loads without xdist. COSTS names units that exist."""
import collections
import os
import subprocess
import sys
import textwrap

import pytest

from tests import conftest as suite

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Per file: number of tests. The costs contradict both the collection order and xdist's own
# order (most tests first): the costliest units have the fewest tests and come last.
FILES = {"test_a.py": 6, "test_b.py": 5, "test_c.py": 2, "test_d.py": 3, "test_spread.py": 3}
SPREAD = ("test_spread.py",)
COSTS = {"test_spread.py::test_case[0]": 100, "test_spread.py::test_case[1]": 90,
         "test_c.py": 50, "test_d.py": 40}

# Loads the suite's conftest (as `-p tests.conftest` does) with this tree's SPREAD and COSTS,
# and logs, per worker, each build of a module fixture and each test run, in order.
CONFTEST = """
import os

import pytest

import tests.conftest as suite

suite.SPREAD = frozenset({spread!r})
suite.COSTS = {costs!r}


def _note(*words):
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  with open(os.path.join(os.environ["SCHEDULE_LOG"], worker), "a") as f:
    f.write(" ".join(words) + "\\n")


@pytest.fixture(scope="module")
def built(request):
  _note("build", request.node.nodeid)


@pytest.fixture(autouse=True)
def ran(built, request):
  _note("run", request.node.nodeid)
"""

TEST_FILE = """
import time

import pytest


@pytest.mark.parametrize("i", range({n}))
def test_case(i):
  time.sleep(0.02)
"""


def _run_tree(tmp_path, *args):
  """Writes the tree, runs pytest on it with `args`; returns {worker: [(kind, nodeid)]}."""
  tree, log = tmp_path / "tree", tmp_path / "log"
  tree.mkdir()
  log.mkdir()
  (tree / "pytest.ini").write_text("[pytest]\n")
  (tree / "conftest.py").write_text(CONFTEST.format(spread=SPREAD, costs=COSTS))
  for name, n in FILES.items():
    (tree / name).write_text(TEST_FILE.format(n=n))
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
  # Only the plugins named on the command line (the installed ones slow the start down).
  env.update(PYTHONPATH=REPO, SCHEDULE_LOG=str(log), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
       f"--basetemp={tmp_path / 'base'}", *args],
      cwd=tree, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  events = {}
  for worker in sorted(os.listdir(log)):
    lines = (log / worker).read_text().splitlines()
    events[worker] = [tuple(line.split(" ", 1)) for line in lines]
  all_tests = sorted(f"{name}::test_case[{i}]" for name, n in FILES.items() for i in range(n))
  assert sorted(nodeid for e in events.values() for kind, nodeid in e if kind == "run") == (
      all_tests)
  return events


def _unit(nodeid):
  path = nodeid.split("::", 1)[0]
  return nodeid if path in SPREAD else path


def _assert_files_whole(events):
  """Each file other than SPREAD's ran on one worker, its module fixture built once."""
  workers_of = collections.defaultdict(set)
  builds = collections.Counter()
  for worker, e in events.items():
    for kind, nodeid in e:
      if kind == "run":
        workers_of[nodeid.split("::", 1)[0]].add(worker)
      else:
        builds[nodeid] += 1
  for name in FILES:
    if name not in SPREAD:
      assert len(workers_of[name]) == 1, (name, dict(workers_of))
      assert builds[name] == 1, (name, dict(builds))
  return workers_of


@pytest.mark.parametrize("workers", [2, 1])
def test_files_stay_whole_and_costly_units_start_first(tmp_path, workers):
  events = _run_tree(tmp_path, "-p", "xdist.plugin", "-n", str(workers), "--dist", "loadgroup")
  assert sorted(events) == [f"gw{i}" for i in range(workers)]
  workers_of = _assert_files_whole(events)
  cost = lambda unit: COSTS.get(unit, suite.DEFAULT_COST)  # pylint: disable=unnecessary-lambda-assignment
  for worker, e in events.items():
    units = list(dict.fromkeys(_unit(nodeid) for kind, nodeid in e if kind == "run"))
    costs = [cost(u) for u in units]
    assert costs == sorted(costs, reverse=True), (worker, units)
  if workers == 2:
    # The two costliest units (SPREAD tests) start one on each worker.
    firsts = {e[0][1] if e[0][0] == "run" else e[1][1] for e in events.values()}
    assert firsts == {"test_spread.py::test_case[0]", "test_spread.py::test_case[1]"}, events
    assert workers_of["test_spread.py"] == {"gw0", "gw1"}
  else:
    runs = [nodeid for kind, nodeid in events["gw0"] if kind == "run"]
    assert runs[:4] == ["test_spread.py::test_case[0]", "test_spread.py::test_case[1]",
                        "test_c.py::test_case[0]", "test_c.py::test_case[1]"], runs


def test_without_xdist(tmp_path):
  events = _run_tree(tmp_path, "-p", "no:xdist")
  assert list(events) == ["main"]
  _assert_files_whole(events)


def test_costs_name_units_of_the_suite():
  """A renamed file or case would silently fall back to DEFAULT_COST."""
  spread_keys = [k for k in suite.COSTS if "::" in k]
  for key in suite.COSTS:
    assert os.path.isfile(os.path.join(REPO, key.split("::", 1)[0])), key
    assert suite.group_of(key) == key, key
  env = dict(os.environ, PYTHONPATH=REPO, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
       *sorted(suite.SPREAD)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  collected = set(result.stdout.split())
  assert not [k for k in spread_keys if k not in collected], (spread_keys, result.stdout)
