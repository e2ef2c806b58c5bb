"""Export under faults: a full disk and SIGKILL at random points leave the versions already
exported intact (and servable), leave no half version, and a re-run completes."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.export import exporter_lib
from tests import cli_util
from tests import fault_util
from tests.export import cli_loader
from tests.export import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _du(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _serve(version_dir):
  """Detections of a fixed batch from an exported version (loaded afresh)."""
  videos = [tiny_model.random_features(t, i) for i, t in enumerate((20, 14))]
  feats, num_steps = tiny_model.pad_batch(videos)
  fn = tf.saved_model.load(version_dir).signatures["serving_default"]
  out = fn(num_steps=tf.constant(num_steps), feature_fps=tf.constant([1.0, 2.0]),
           **{s: tf.constant(v) for s, v in feats.items()})
  return {k: v.numpy() for k, v in out.items()}


def _assert_versions_complete(base):
  """Every all-digit folder is a complete SavedModel whose variables read."""
  for version in exporter_lib.existing_versions(base):
    path = os.path.join(base, str(version))
    assert os.path.isfile(os.path.join(path, "saved_model.pb")), path
    tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))


def _served_copy(exported, base):
  """Version 1 under `base`: a copy of the session's export of the same pipeline and
  checkpoint (what `_export` would write again, without tracing the model once more)."""
  first = os.path.join(base, "1")
  shutil.copytree(exported["export_dir"], first)
  return first


def _export(exported, base, *extra):
  cli = cli_loader.load_exporter_cli()
  fv = cli_util.parse_flags(
      cli, f"--pipeline_config={exported['config_path']}",
      f"--trained_checkpoint_dir={exported['checkpoint']}", f"--output_directory={base}",
      *extra)
  return cli.run(fv)


def test_disk_full_during_export_keeps_the_served_versions(exported, tmp_path):
  size = _du(exported["export_dir"])
  disk = str(tmp_path / "disk")
  # Room for one version and a half: the second export runs out of space mid-way.
  with fault_util.small_disk(disk, int(size * 1.5) + 2**20):
    base = os.path.join(disk, "serving")
    first = _export(exported, base)
    before = _serve(first)
    fault_util.fill_disk(disk, leave_bytes=size // 2)
    with pytest.raises(exporter_lib.ExportError) as info:
      _export(exported, base)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{base}: writing version 2 failed (")
    assert "No space left on device" in message and "versions [1] are untouched" in message
    assert sorted(os.listdir(base)) == ["1"]  # No half version, no staging folder.
    after = _serve(first)
    for key, value in before.items():
      np.testing.assert_array_equal(after[key], value, err_msg=key)
    # An overwrite of version 1 that runs out of space keeps the old version 1 too.
    with pytest.raises(exporter_lib.ExportError, match="writing version 1 failed"):
      _export(exported, base, "--model_version=1", "--overwrite")
    assert sorted(os.listdir(base)) == ["1"]
    np.testing.assert_array_equal(_serve(first)["detection_scores"],
                                  before["detection_scores"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exporter_killed_at_random_points(exported, tmp_path, seed):
  """SIGKILL export_saved_model.py at a random moment (seeded), with --overwrite of the
  served version: it is always there and complete afterwards, and a re-run completes."""
  rng = np.random.default_rng(seed)
  base = str(tmp_path / "serving")
  first = _served_copy(exported, base)
  before = _serve(first)
  cmd = [sys.executable, os.path.join(REPO, "export", "export_saved_model.py"),
         f"--pipeline_config={exported['config_path']}",
         f"--trained_checkpoint_dir={exported['checkpoint']}", f"--output_directory={base}",
         "--model_version=1", "--overwrite"]
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  started = lambda: any(n.startswith(".export-") for n in os.listdir(base))  # pylint: disable=unnecessary-lambda-assignment
  killed, code, stderr = fault_util.kill_at_random(cmd, rng, started, max_delay=8.0, env=env)
  if not killed:
    assert code == 0, stderr[-3000:]
  # The next export puts back a version moved aside by the killed one and clears its
  # staging folder; until then TF Serving sees only complete versions.
  _assert_versions_complete(base)
  result = subprocess.run(cmd[:-2], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert not [n for n in os.listdir(base) if n.startswith(".")], os.listdir(base)
  assert exporter_lib.existing_versions(base) == [1, 2]
  _assert_versions_complete(base)
  for version in (1, 2):
    after = _serve(os.path.join(base, str(version)))
    np.testing.assert_array_equal(after["detection_scores"], before["detection_scores"])


def test_overwrite_never_leaves_the_served_version_missing(exported, tmp_path, monkeypatch):
  """An --overwrite export swaps the new version in with one exchange: after every rename or
  exchange the export makes, the version folder exists and is complete (two renames leave a
  moment, and a kill point, where it is missing)."""
  from tal_tf.utils import atomic_files  # pylint: disable=g-import-not-at-top
  base = str(tmp_path / "serving")
  first = _served_copy(exported, base)
  seen = []

  def observed(fn):
    def wrapper(*args):
      result = fn(*args)
      seen.append((fn.__name__, os.path.isfile(os.path.join(first, "saved_model.pb"))))
      return result
    return wrapper

  monkeypatch.setattr(os, "rename", observed(os.rename))
  monkeypatch.setattr(atomic_files, "exchange_paths", observed(atomic_files.exchange_paths))
  again = _export(exported, base, "--model_version=1", "--overwrite")
  monkeypatch.undo()
  assert again == first
  assert ("exchange_paths", True) in seen, seen
  assert all(present for _, present in seen), seen
  assert sorted(os.listdir(base)) == ["1"]
  _assert_versions_complete(base)


def test_exchange_paths_swaps_two_folders(tmp_path):
  from tal_tf.utils import atomic_files  # pylint: disable=g-import-not-at-top
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir()
  b.mkdir()
  (a / "x").write_text("from a")
  (b / "y").write_text("from b")
  assert atomic_files.exchange_paths(str(a), str(b))
  assert sorted(os.listdir(a)) == ["y"] and (a / "y").read_text() == "from b"
  assert sorted(os.listdir(b)) == ["x"] and (b / "x").read_text() == "from a"
  with pytest.raises(FileNotFoundError):
    atomic_files.exchange_paths(str(a), str(tmp_path / "missing"))
