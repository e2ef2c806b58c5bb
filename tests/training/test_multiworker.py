"""Multi-worker training: two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy,
TF_CONFIG per process) train the toy model of tests/contract, one is SIGKILLed, the job is
restarted and resumes. Checked against one process training on the same global batches:

* both replicas hold identical weights after every step, equal (to float tolerance) to the
  single process's weights after the same step, before and after the kill;
* the restarted job resumes from the newest checkpoint (both workers the same one) and
  re-trains the lost steps on the same records the killed run used;
* the records used per step continue across the kill: every training video once per epoch,
  none seen twice or skipped, the same batches as the uninterrupted single process;
* only the chief writes model_dir; the other worker's checkpoint folder is gone.

The machine may be heavily loaded: step counts are tiny and timeouts generous.
"""
import collections
import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import synthetic_thumos
from tal_tf.training import local_cluster
from tal_tf.training import train_lib
from tal_tf.utils import config_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(REPO, "tests", "training", "multiworker_run.py")
TOY_CONFIG = os.path.join(REPO, "tests", "contract", "toy_model.config")
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
ENV.pop("TF_CONFIG", None)

NUM_VIDEOS = 6  # Training videos: three global batches of 2 per epoch.
TARGET = 10  # Steps of the restarted job (3.3 epochs).
KILL_AFTER_CHECKPOINT = 4
EMBED_STEPS = 6  # Phase "embed" is steps 1-6, phase "head" from 7 on.
TIMEOUT = 900


def _write_config(tmp, data, strategy):
  """The toy config on the tiny records: deterministic (no dropout, momentum SGD), every
  step its own loop, a checkpoint every 2 steps."""
  config = config_util.load_pipeline_config(TOY_CONFIG)
  train = config.train_config
  train.distribution_strategy = strategy
  train.input_order = "deterministic"
  train.steps_per_loop = 1
  train.checkpoint_every_n_steps = 2
  train.max_checkpoints_to_keep = 100
  train.log_every_n_steps = 1
  train.summary_every_n_steps = 1
  train.phases[0].num_steps = EMBED_STEPS
  train.phases[1].num_steps = 100000
  for phase in train.phases:
    phase.optimizer.Clear()
    phase.optimizer.momentum.momentum = 0.9
    phase.optimizer.learning_rate.constant.learning_rate = 0.05
  reader = config.train_input_reader
  del reader.input_path[:]
  reader.input_path.append(data["train"])
  reader.label_map_path = data["label_map"]
  reader.max_steps = 16  # Every video is longer: all crops have 16 valid steps.
  reader.shuffle_buffer_size = 4
  reader = config.eval_input_reader
  del reader.input_path[:]
  reader.input_path.append(data["train"])
  reader.label_map_path = data["label_map"]
  name = f"{strategy}.config"
  config_util.save_pipeline_config(config, str(tmp), name)
  return str(tmp / name)


def _start_workers(config, model_dir, steps, out, run):
  ports = local_cluster.free_ports(2)
  procs = []
  for i in range(2):
    dump = out / f"run{run}_worker{i}"
    dump.mkdir()
    log = open(out / f"run{run}_worker{i}.log", "w")
    procs.append((subprocess.Popen(
        [sys.executable, RUNNER, f"--config={config}", f"--model_dir={model_dir}",
         f"--num_train_steps={steps}", f"--ports={ports[0]},{ports[1]}", f"--task_index={i}",
         f"--dump_dir={dump}", f"--ids_file={out / f'run{run}_worker{i}.ids'}"],
        env=ENV, stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def _log(out, run, worker):
  with open(out / f"run{run}_worker{worker}.log") as f:
    return f.read()


def _wait(procs, out, run, timeout=TIMEOUT):
  deadline = time.time() + timeout
  for i, (proc, log) in enumerate(procs):
    try:
      proc.wait(timeout=max(1, deadline - time.time()))
    finally:
      log.close()
      if proc.poll() is None:
        for p, _ in procs:
          p.kill()
    assert proc.returncode == 0, f"worker {i} failed:\n{_log(out, run, i)[-5000:]}"


def _steps(dump_dir):
  """{step: path} of the replica's weight dumps (not the temporary file of a dump that a
  SIGKILL interrupted: step-<N>.npz.tmp.npz)."""
  steps = {}
  for path in glob.glob(str(dump_dir / "step-*.npz")):
    match = re.fullmatch(r"step-(\d+)\.npz", os.path.basename(path))
    if match:
      steps[int(match.group(1))] = path
  return steps


def _weights(path):
  with np.load(path) as f:
    return [f[k] for k in sorted(f.files)]


def _ids(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [line.split() for line in f.read().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs the killed job, the restarted job and the single-process reference once."""
  tmp = tmp_path_factory.mktemp("multiworker")
  paths = synthetic_thumos.generate_dataset(
      str(tmp / "data"), subsets=("validation",), num_videos=NUM_VIDEOS,
      stream_dims=collections.OrderedDict([("rgb", 6), ("flow", 4)]), feature_fps=1.0, seed=0)
  # One file < two workers: sharded by data, so the global batch of every step is the one a
  # single process trains on.
  create_tfrecord.convert_dataset(
      paths["annotations"], str(tmp / "train"), paths["label_map"],
      feature_readers.NpyDirSource(paths["features"], None), subset="validation",
      num_shards=1, feature_fps=1.0, ignore_classes=("Ambiguous",), progress_stream=None)
  data = dict(train=str(tmp / "train-*.tfrecord"), label_map=paths["label_map"])
  multi = _write_config(tmp, data, "multi_worker_mirrored")
  single = _write_config(tmp, data, "default")
  model_dir = tmp / "model"
  out = tmp / "out"
  out.mkdir()

  # The reference, meanwhile: one process, the same global batches, uninterrupted.
  reference_dir = out / "single"
  reference_dir.mkdir()
  reference_log = open(out / "single.log", "w")
  reference = subprocess.Popen(
      [sys.executable, RUNNER, f"--config={single}", f"--model_dir={tmp / 'single_model'}",
       f"--num_train_steps={TARGET}", f"--dump_dir={reference_dir}",
       f"--ids_file={out / 'single.ids'}"], env=ENV, stdout=reference_log,
      stderr=subprocess.STDOUT)

  try:
    # Run 1: a long run; worker 1 is SIGKILLed once a checkpoint past step 4 exists.
    procs = _start_workers(multi, str(model_dir), 1000, out, 1)
    try:
      deadline = time.time() + TIMEOUT
      while not glob.glob(str(model_dir / f"ckpt-{KILL_AFTER_CHECKPOINT}.index")):
        for i, (p, _) in enumerate(procs):
          assert p.poll() is None, f"worker {i} exited early:\n{_log(out, 1, i)[-5000:]}"
        assert time.time() < deadline, "no checkpoint within the timeout"
        time.sleep(0.5)
      procs[1][0].send_signal(signal.SIGKILL)
      procs[1][0].wait()
      killed = time.time()
      # The chief's next all-reduce has no peer: the coordination service's heartbeat
      # should make it fail rather than hang; the job is then restarted.
      try:
        procs[0][0].wait(timeout=120)
        chief_exit = (procs[0][0].returncode, time.time() - killed)
      except subprocess.TimeoutExpired:
        chief_exit = (None, None)
        procs[0][0].send_signal(signal.SIGKILL)
        procs[0][0].wait()
    finally:
      for p, log in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
        log.close()
    killed_at = {i: max(_steps(out / f"run1_worker{i}"), default=0) for i in range(2)}

    # Run 2: the job restarted (both workers), to step TARGET.
    procs = _start_workers(multi, str(model_dir), TARGET, out, 2)
    _wait(procs, out, 2)

    reference.wait(timeout=TIMEOUT)
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.wait()
    reference_log.close()
  with open(out / "single.log") as f:
    assert reference.returncode == 0, f.read()[-5000:]
  return dict(tmp=tmp, out=out, model_dir=model_dir, killed_at=killed_at,
              chief_exit=chief_exit)


def _restored_step(log):
  for line in log.splitlines():
    if "restored " in line and "(step " in line:
      return int(line.rsplit("(step ", 1)[1].split(")")[0])
  return None


def test_restarted_job_resumes_from_the_last_checkpoint(runs):
  out = runs["out"]
  resumed = {_restored_step(_log(out, 2, i)) for i in range(2)}
  assert len(resumed) == 1, resumed
  step = resumed.pop()
  assert step is not None and step >= KILL_AFTER_CHECKPOINT
  assert step <= min(runs["killed_at"].values())
  # Run 2 trained exactly the steps after the restored checkpoint.
  for i in range(2):
    assert sorted(_steps(out / f"run2_worker{i}")) == list(range(step + 1, TARGET + 1))
  assert tf.train.latest_checkpoint(str(runs["model_dir"])).endswith(f"ckpt-{TARGET}")


def test_the_surviving_worker_fails_instead_of_hanging(runs):
  code, seconds = runs["chief_exit"]
  assert code is not None, "the chief hung for 120 s after its peer was killed"
  assert code != 0
  # How the loss of the peer surfaces depends on timing: the coordination service's heartbeat
  # timeout, or (when the chief is inside a collective at the kill) the collective aborting
  # with UNAVAILABLE on the reset connection. Either way the error names the lost peer.
  log = _log(runs["out"], 1, 0)
  assert ("heartbeat timeout" in log
          or ("UNAVAILABLE" in log and "Connection reset by peer" in log)), log[-3000:]
  print(f"chief failed {seconds:.0f} s after the SIGKILL")


def test_replicas_identical_and_equal_to_one_process_after_every_step(runs):
  out = runs["out"]
  reference = _steps(out / "single")
  assert sorted(reference) == list(range(1, TARGET + 1))
  checked = 0
  for run in (1, 2):
    steps = [_steps(out / f"run{run}_worker{i}") for i in range(2)]
    for step in sorted(set(steps[0]) & set(steps[1])):
      w0, w1 = _weights(steps[0][step]), _weights(steps[1][step])
      for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b, err_msg=f"run {run} step {step}")
      for a, r in zip(w0, _weights(reference[step])):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6,
                                   err_msg=f"run {run} step {step} vs one process")
      checked += 1
  assert checked >= TARGET
  # Training moved the weights (a test that could not fail otherwise).
  first, last = _weights(reference[1]), _weights(reference[TARGET])
  assert any(not np.allclose(a, b) for a, b in zip(first, last))


def test_no_video_seen_twice_or_skipped_across_the_kill(runs):
  out = runs["out"]
  resumed = _restored_step(_log(out, 2, 0))
  per_worker = []
  for i in range(2):
    run1, run2 = _ids(out / f"run1_worker{i}.ids"), _ids(out / f"run2_worker{i}.ids")
    assert len(run1) >= resumed and len(run2) == TARGET - resumed
    # Steps after the restored checkpoint that the killed run had trained are retrained on
    # the very same videos (the order continued; it did not restart).
    assert run1[resumed:resumed + len(run2)] == run2[:len(run1) - resumed]
    per_worker.append(run1[:resumed] + run2)
  # Global batch of each step: the two workers' per-replica batches.
  batches = [sorted(per_worker[0][s] + per_worker[1][s]) for s in range(TARGET)]
  single = [sorted(b) for b in _ids(out / "single.ids")]
  assert batches == single
  sequence = [v for b in batches for v in b]
  videos = sorted(set(sequence))
  assert len(videos) == NUM_VIDEOS
  for epoch in range(len(sequence) // NUM_VIDEOS):
    assert sorted(sequence[epoch * NUM_VIDEOS:(epoch + 1) * NUM_VIDEOS]) == videos
  # Not simply file order each epoch: epochs are shuffled differently.
  epochs = [sequence[e * NUM_VIDEOS:(e + 1) * NUM_VIDEOS] for e in range(3)]
  assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_only_the_chief_writes_model_dir(runs):
  model_dir = runs["model_dir"]
  assert not glob.glob(str(model_dir / f"{train_lib.WORKER_TEMP_PREFIX}*"))
  assert os.path.exists(model_dir / "pipeline.config")
  events = glob.glob(str(model_dir / train_lib.TRAIN_SUBDIR / "events.*"))
  # One summary file per run of the chief (run 1 and run 2), none from the other worker.
  assert len(events) == 2
  assert not os.path.exists(model_dir / ".tal_tf_train.lock")
