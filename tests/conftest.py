"""Shared pytest set-up: Keras 2 (tf_keras) everywhere, quiet TensorFlow logs, and the
pytest-xdist schedule of `make test`."""
import os
import sys

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# `make test` runs the suite on pytest-xdist workers with `--dist loadgroup`, scheduled by
# FileScheduling below: the tests of one file share module- and session-scoped fixtures
# (trained models, exports, converted records), so a file goes to one worker as a whole;
# the files in SPREAD (independent, minutes-long cases such as the contract test's models)
# deal each test out on its own. Paths are relative to the repository root (pytest's rootdir).
SPREAD = frozenset({"tests/contract/test_contract.py"})

# Seconds a work unit (a file, or one test of a SPREAD file) takes on one worker while the
# other is busy too (`make test`, 2 workers, 2 cores). Units start longest first so that
# the last ones to finish are short and the workers end together; a long unit started last
# would leave the other worker idle. Units not listed count as DEFAULT_COST and follow the
# listed ones in xdist's order (most tests first, so a one-test unit comes last); a new unit
# taking half a minute or more belongs here. Measured: the junit XML of a full `make test`
# with this scheduler (setup + call + teardown of each test, summed per unit; load average 3
# to 4 on the 2 cores, i.e. shared with other jobs; 20.5 min wall), rounded to 10 s; the
# units of 30 s or more. The 92 units summed to 2340 s.
DEFAULT_COST = 5.0
_CONTRACT = "tests/contract/test_contract.py::test_model_runs_the_whole_user_path"
COSTS = {
    "tests/training/test_training.py": 280,
    "tests/export/test_export_faults.py": 180,
    "tests/training/test_etp_frames_training.py": 170,
    f"{_CONTRACT}[tal_net]": 160,
    "tests/builders/test_builders.py": 140,
    f"{_CONTRACT}[etp]": 130,
    "tests/export/test_exporter.py": 120,
    "tests/inference/test_etp_mixed_inference.py": 110,
    "tests/meta_architectures/test_tal_net_options.py": 100,
    f"{_CONTRACT}[scnn_c3d]": 80,
    f"{_CONTRACT}[scnn]": 70,
    "tests/training/test_faults.py": 70,
    "tests/meta_architectures/test_tal_net_meta_arch.py": 50,
    "tests/video/test_video_inference.py": 50,
    f"{_CONTRACT}[toy]": 50,
    "tests/training/test_phases.py": 50,
    "tests/training/test_multiworker.py": 40,
    f"{_CONTRACT}[wtal]": 40,
    "tests/meta_architectures/test_etp_frame_actionness.py": 30,
}


def group_of(nodeid):
  """The xdist work unit of a test: its file, or the test itself in a SPREAD file."""
  path = nodeid.split("::", 1)[0]
  return nodeid if path in SPREAD else path


def cost_of(unit):
  return COSTS.get(unit, DEFAULT_COST)


# tryfirst: ahead of xdist's own implementation (the hook is firstresult); optionalhook: the
# hook exists only with xdist loaded (`-p no:xdist` runs the suite in one process).
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`--dist loadgroup` -> FileScheduling. xdist's own LoadGroupScheduling groups by the
  xdist_group mark written into each nodeid, which pytest 9 no longer lets it rewrite: every
  test became a unit of its own, and each worker built every module fixture again."""
  if config.getvalue("dist") != "loadgroup":
    return None
  return _file_scheduling_class()(config, log)


def _file_scheduling_class():
  # Imported here: the module is loaded without xdist too.
  from xdist.scheduler import loadscope  # pylint: disable=g-import-not-at-top

  class FileScheduling(loadscope.LoadScopeScheduling):
    """LoadScopeScheduling (xdist 3.8) with units from group_of, taken costliest first
    (cost_of); a worker is given its next unit only when it is on the last test of the
    current one, so each unit goes to whichever worker frees up first."""

    def _split_scope(self, nodeid):
      return group_of(nodeid)

    def _assign_work_unit(self, node):
      # The costliest unit waiting; among equals the first in the queue, which
      # LoadScopeScheduling.schedule ordered (by number of tests, or by collection with
      # --no-loadscope-reorder). A crashed worker's unfinished unit rejoins the queue too.
      unit = max(self.workqueue, key=cost_of)
      self.workqueue.move_to_end(unit, last=False)
      super()._assign_work_unit(node)

    def _reschedule(self, node):
      # LoadScopeScheduling tops a worker up while it has 2 tests or fewer left, which
      # commits the next unit to it a test early. A worker holds its last test back until
      # it is sent more work (or shut down), so 1 is the least that keeps it running.
      if not node.shutting_down and self.workqueue and (
          self._pending_of(self.assigned_work[node]) > 1):
        return
      super()._reschedule(node)

  return FileScheduling
