"""The converter under faults: SIGKILL at random points, and a full disk (a small tmpfs).

Each time the previous outputs of the prefix must stay readable (every shard a whole
TFRecord file, each video once, the summary valid JSON) and a re-run must complete.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.data import sequence_example
from tests import cli_util

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_VIDEOS = 120
DIMS = {"rgb": 32, "flow": 16}
FPS = 2.0


def _dataset(directory, num_videos=NUM_VIDEOS, steps=60):
  rng = np.random.default_rng(0)
  db = {}
  for stream, dim in DIMS.items():
    os.makedirs(os.path.join(directory, stream))
  for i in range(num_videos):
    vid = f"v{i:04d}"
    db[vid] = {"subset": "train", "duration": steps / FPS,
               "annotations": [{"segment": [1.0, 5.0], "label": f"C{i % 3}"}]}
    for stream, dim in DIMS.items():
      np.save(os.path.join(directory, stream, vid + ".npy"),
              rng.normal(size=(steps, dim)).astype(np.float32))
  path = os.path.join(directory, "ann.json")
  with open(path, "w") as f:
    json.dump({"database": db}, f)
  return path


def _command(directory, ann, prefix, num_shards):
  return [sys.executable, "-m", "tal_tf.dataset_tools.create_tfrecord",
          f"--annotations={ann}", f"--output={prefix}", f"--num_shards={num_shards}",
          f"--features=rgb:{directory}/rgb,flow:{directory}/flow", f"--feature_fps={FPS}",
          f"--label_map={directory}/lm.pbtxt"]


def _env():
  return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _check_outputs(prefix, expected_ids):
  """Every shard of the glob reads whole, each video once; the summary is valid JSON."""
  ids = []
  for path in sorted(tf.io.gfile.glob(prefix + "-*")):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      ids.append(sequence_example.decode_sequence_example_numpy(record)["video_id"])
  assert sorted(ids) == sorted(expected_ids)
  with open(prefix + ".summary.json") as f:
    summary = json.load(f)
  assert summary["num_written"] == len(expected_ids)
  return summary


def _convert_in_process(command):
  """Runs the converter CLI's main in this process (TensorFlow is already imported here)."""
  from tal_tf.dataset_tools import create_tfrecord  # pylint: disable=g-import-not-at-top
  fv = cli_util.parse_flags(create_tfrecord, *command[3:])
  return create_tfrecord.convert_dataset(
      annotations_path=fv.annotations, output_prefix=fv.output, label_map_path=fv.label_map,
      feature_source=create_tfrecord.feature_source_from_flags(fv), num_shards=fv.num_shards,
      feature_fps=fv.feature_fps, progress_stream=None)


def _hidden(directory):
  return [n for n in os.listdir(directory) if n.startswith(".")]


def test_sigkill_at_random_points_keeps_previous_outputs(tmp_path):
  directory = str(tmp_path)
  ann = _dataset(directory)
  prefix = os.path.join(directory, "out", "train")
  out_dir = os.path.dirname(prefix)
  ids = [f"v{i:04d}" for i in range(NUM_VIDEOS)]
  command = _command(directory, ann, prefix, 3)
  start = time.time()
  _convert_in_process(command)          # The previous outputs.
  write_seconds = time.time() - start
  _check_outputs(prefix, ids)
  killed_writing = 0
  for seed in range(3):
    rng = np.random.default_rng(seed)
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if seed == 0:
      time.sleep(rng.uniform(0.5, 3.0))  # Somewhere in start-up or reading annotations.
    else:
      # Wait for the first temporary shard, then kill while writing or committing.
      while proc.poll() is None and not _hidden(out_dir):
        time.sleep(0.01)
      # Seed 1 kills right after the first temporary shard appears (surely mid-write, even
      # on a loaded machine); seed 2 anywhere up to past the end of writing/committing.
      time.sleep(rng.uniform(0.0, 0.05) if seed == 1 else
                 rng.uniform(0.0, 1.2) * write_seconds)
    if proc.poll() is None:
      killed_writing += seed > 0 and bool(_hidden(out_dir))
      proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    _check_outputs(prefix, ids)
  assert killed_writing >= 1  # At least one kill hit the writing phase.
  # A re-run completes and removes the temporaries the killed runs left.
  summary = _convert_in_process(command)
  assert summary.num_written == NUM_VIDEOS
  on_disk = _check_outputs(prefix, ids)
  shards = sorted(glob.glob(prefix + "-*"))
  assert on_disk["shard_bytes"] == [os.path.getsize(p) for p in shards]
  assert _hidden(out_dir) == []


@pytest.fixture
def small_tmpfs(tmp_path):
  mount_point = str(tmp_path / f"tmpfs_{uuid.uuid4().hex[:8]}")
  os.makedirs(mount_point)
  if shutil.which("mount") is None:
    pytest.skip("no mount command on this machine")
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mount_point],
                          capture_output=True, text=True)
  if result.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): "
                f"{result.stderr.strip()}")
  yield mount_point
  subprocess.run(["umount", mount_point], check=False)


def test_disk_full_is_one_clear_line_and_previous_outputs_stay(tmp_path, small_tmpfs):
  directory = str(tmp_path)
  ann = _dataset(directory, num_videos=40)
  prefix = os.path.join(small_tmpfs, "train")
  ids = [f"v{i:04d}" for i in range(40)]
  _convert_in_process(_command(directory, ann, prefix, 2))
  before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(small_tmpfs, "*"))}
  used = sum(len(b) for b in before.values())
  # Fill the disk so that a second copy of the shards cannot fit beside the first.
  stat = os.statvfs(small_tmpfs)
  free = stat.f_bavail * stat.f_frsize
  filler = os.path.join(small_tmpfs, "filler")
  with open(filler, "wb") as f:
    f.write(b"\0" * max(0, free - used // 2))
  second = subprocess.run(_command(directory, ann, prefix, 2), env=_env(),
                          capture_output=True, text=True, timeout=300)
  lines = [l for l in second.stderr.splitlines() if l.strip()]
  assert second.returncode == 2, second.stderr
  assert len(lines) == 1, second.stderr
  assert "no space left on device" in lines[0] and prefix in lines[0], lines[0]
  after = {p: open(p, "rb").read() for p in before}
  assert after == before  # previous shards, summary and label map untouched
  assert sorted(glob.glob(os.path.join(small_tmpfs, ".*"))) == []  # no temporaries left
  _check_outputs(prefix, ids)
  os.remove(filler)
  assert _convert_in_process(_command(directory, ann, prefix, 2)).num_written == 40
  _check_outputs(prefix, ids)
