"""Training loop, evaluation and train_main.py end to end on tiny embedded-dataset records."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.data import deterministic_order
from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import synthetic_thumos
from tal_tf.training import run_lib
from tal_tf.training import train_lib
from tal_tf.utils import config_util
from tal_tf.utils import feature_rates

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIM = 8

CONFIG = """
model {
  tal_net {
    num_classes: 20
    streams: "rgb"
    streams: "flow"
    feature_reduction_dim: 8
    num_filters: 8
    anchor_generator { multiscale_anchor_generator { scales: [1, 2, 4, 8] } }
    first_stage_nms { iou_threshold: 0.7 max_total: 30 }
    second_stage_nms { iou_threshold: 0.7 max_per_class: 5 max_total: 30 }
  }
}
train_config {
  num_steps: 6
  optimizer { adam {} learning_rate { constant { learning_rate: 0.001 } } }
  checkpoint_every_n_steps: 3
  max_checkpoints_to_keep: 10
  summary_every_n_steps: 2
  log_every_n_steps: 2
  steps_per_loop: 2
  seed: 1
}
train_input_reader {
  input_path: "%(train)s"
  label_map_path: "%(label_map)s"
  streams { name: "rgb" dim: 8 }
  streams { name: "flow" dim: 8 }
  batch_size: 2
  max_steps: 64
}
eval_config {
  tiou_thresholds: [0.3, 0.5, 0.7]
  average_number_of_proposals: [5, 10]
  num_visualizations: 2
}
eval_input_reader {
  input_path: "%(test)s"
  label_map_path: "%(label_map)s"
  streams { name: "rgb" dim: 8 }
  streams { name: "flow" dim: 8 }
  batch_size: 2
}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("embedded")
  paths = synthetic_thumos.generate_dataset(
      str(root / "data"), subsets=("validation", "test"), num_videos=3,
      stream_dims={"rgb": DIM, "flow": DIM}, feature_fps=1.0, seed=0)
  source = feature_readers.NpyDirSource(paths["features"], None)
  out = {}
  for subset, name in (("validation", "train"), ("test", "test")):
    create_tfrecord.convert_dataset(
        paths["annotations"], str(root / name), paths["label_map"], source, subset=subset,
        num_shards=1, feature_fps=1.0, ignore_classes=("Ambiguous",),
        progress_stream=None)
    out[name] = str(root / f"{name}-*.tfrecord")
  out["label_map"] = paths["label_map"]
  config_path = root / "pipeline.config"
  config_path.write_text(CONFIG % out)
  out["config"] = str(config_path)
  return out


def _events(directory):
  """{tag: [(step, value or image)]} read back from the event files in `directory`."""
  tags = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
        tags.setdefault(value.tag, []).append((event.step, tensor))
  return tags


def test_train_and_eval_writes_checkpoints_summaries_metrics(data, tmp_path):
  config = config_util.load_pipeline_config(data["config"])
  model_dir = str(tmp_path / "run")
  metrics = run_lib.run(config, model_dir, "train_and_eval")
  # Checkpoints at the configured interval, and the as-run config beside them.
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-6")
  assert os.path.exists(os.path.join(model_dir, "ckpt-3.index"))
  saved = config_util.load_pipeline_config(os.path.join(model_dir, "pipeline.config"))
  assert saved == config
  # Training scalars: per-stage losses, learning rate, steps/s at every summary interval.
  train_tags = _events(os.path.join(model_dir, "train"))
  for tag in ("losses/first_stage_classification_loss", "losses/second_stage_localization_loss",
              "losses/total_loss", "learning_rate", "steps_per_second"):
    assert [s for s, _ in train_tags[tag]] == [2, 4, 6], tag
  np.testing.assert_allclose(float(train_tags["learning_rate"][0][1]), 0.001, rtol=1e-6)
  # Evaluation: scalars + images in TensorBoard, metrics JSON in the model dir.
  eval_tags = _events(os.path.join(model_dir, "eval"))
  for tag in ("mAP@0.3", "mAP@0.5", "mAP@0.7", "average_mAP", "AR@5", "AR@10"):
    assert tag in eval_tags, sorted(eval_tags)
  images = [t for t in eval_tags if t in ("per_class_ap", "recall_vs_num_proposals",
                                          "detection_timelines")]
  assert len(images) == 3, sorted(eval_tags)
  with open(os.path.join(model_dir, "metrics.json")) as f:
    saved_metrics = json.load(f)
  assert saved_metrics["global_step"] == 6
  np.testing.assert_allclose(saved_metrics["detection"]["average_mAP"],
                             metrics["detection"]["average_mAP"])
  assert len(metrics["detection"]["mAP"]) == 3
  assert os.path.exists(os.path.join(model_dir, "eval", "detections_step_6.json"))
  _check_tensorboard_serves(model_dir)


def _check_tensorboard_serves(model_dir):
  """Serves the logs with TensorBoard on 127.0.0.1 and reads the scalar and image tags."""
  import socket
  import urllib.request
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  board = subprocess.Popen(
      [sys.executable, "-m", "tensorboard.main", f"--logdir={model_dir}", "--host=127.0.0.1",
       f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 90
    while True:
      try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
          scalars = json.load(r)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/data/plugin/images/tags", timeout=5) as r:
          images = json.load(r)
        if "eval" in scalars and "train" in scalars and "eval" in images:
          break
      except OSError:
        pass
      assert time.time() < deadline, "TensorBoard did not serve the logs within 90 s"
      time.sleep(0.5)
  finally:
    board.kill()
    board.wait()
  assert "losses/total_loss" in scalars["train"] and "learning_rate" in scalars["train"]
  assert "average_mAP" in scalars["eval"] and "AR@10" in scalars["eval"]
  assert {"per_class_ap", "recall_vs_num_proposals", "detection_timelines"} <= set(
      images["eval"])


def test_resume_continues_from_checkpoint_with_input_position(data, tmp_path):
  config = config_util.load_pipeline_config(data["config"])
  model_dir = str(tmp_path / "run")
  first = train_lib.Trainer(config, model_dir, num_train_steps=3)
  assert first.train() == 3
  # The training rates record: every converted training video at 1 feature step per second.
  rates_path = os.path.join(model_dir, feature_rates.SUMMARY_NAME)
  with open(rates_path) as f:
    recorded = json.load(f)
  num_videos = sum(deterministic_order.count_records(p) for p in glob.glob(data["train"]))
  assert num_videos >= 2
  assert recorded == dict(min=1.0, max=1.0, videos=num_videos,
                          rates=[dict(fps=1.0, videos=num_videos)], since_step=0,
                          input_path=[data["train"]])
  weights_at_3 = [v.numpy() for v in first.model.trainable_variables]
  optimizer_at_3 = [v.numpy() for v in first.optimizer.variables()]
  # A fresh trainer (as after a restart) resumes at step 3 with the same weights, the same
  # Adam moments and the data iterator's saved position, then continues to 6.
  second = train_lib.Trainer(config, model_dir, num_train_steps=6)
  second.restore()
  assert int(second.global_step.numpy()) == 3
  for a, b in zip(weights_at_3, second.model.trainable_variables):
    np.testing.assert_array_equal(a, b.numpy())
  restored = [v.numpy() for v in second.optimizer.variables()]
  assert len(restored) == len(optimizer_at_3) == 2 * len(weights_at_3) + 1  # m, v, step
  for a, b in zip(optimizer_at_3, restored):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(a != 0) for a in optimizer_at_3[1:])  # moments really were trained
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert any(k.startswith("train_iterator") for k in reader.get_variable_to_shape_map())
  assert second.train() == 6
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-6")
  with open(rates_path) as f:
    assert json.load(f) == recorded  # The resumed run on the same data keeps the record.


def test_eval_mode_restores_and_reports(data, tmp_path):
  config = config_util.load_pipeline_config(data["config"])
  model_dir = str(tmp_path / "run")
  train_lib.Trainer(config, model_dir, num_train_steps=2).train()
  metrics = run_lib.run(config, model_dir, "eval")
  assert set(metrics) == {"detection", "proposals"}
  with open(os.path.join(model_dir, "eval", "metrics_step_2.json")) as f:
    assert json.load(f)["global_step"] == 2
  # continuous_eval stops once the final training step has been evaluated.
  metrics = run_lib.run(config, model_dir, "continuous_eval", num_train_steps=2)
  assert metrics is not None


def test_seed_makes_initial_weights_repeat(data, tmp_path):
  config = config_util.load_pipeline_config(data["config"])
  feats = {"rgb": tf.zeros([1, 4, DIM]), "flow": tf.zeros([1, 4, DIM])}
  weights = []
  for run in ("a", "b"):
    trainer = train_lib.Trainer(config, str(tmp_path / run), num_train_steps=1)
    trainer.model.predict(feats, tf.constant([4]))
    weights.append([v.numpy() for v in trainer.model.trainable_variables])
  assert len(weights[0]) == len(weights[1]) > 0
  for a, b in zip(*weights):
    np.testing.assert_array_equal(a, b)


def test_thumos14_protocol_with_annotation_json_uses_ambiguous_segments(data, tmp_path):
  with open(os.path.join(os.path.dirname(data["label_map"]), "annotations.json")) as f:
    source = json.load(f)
  # One 'Ambiguous' segment per test video (converted records never carry them).
  for entry in source["database"].values():
    if entry["subset"].lower() == "test":
      entry["annotations"].append({"segment": [1.0, 3.0], "label": "Ambiguous"})
  annotations = str(tmp_path / "annotations.json")
  with open(annotations, "w") as f:
    json.dump(source, f)
  override = (f'eval_config {{ protocol: "thumos14" annotations_path: "{annotations}" '
              f'subset: "test" }}')
  config = config_util.load_pipeline_config(data["config"], override)
  model_dir = str(tmp_path / "run")
  train_lib.Trainer(config, model_dir, num_train_steps=2).train()
  metrics = run_lib.run(config, model_dir, "eval")["detection"]
  with open(annotations) as f:
    database = json.load(f)["database"]
  test_videos = [e for e in database.values() if e["subset"].lower() == "test"]
  ambiguous = sum(a["label"] == "Ambiguous" for e in test_videos for a in e["annotations"])
  others = sum(a["label"] != "Ambiguous" for e in test_videos for a in e["annotations"])
  assert metrics["protocol"] == "thumos14"
  assert metrics["num_ambiguous_segments"] == ambiguous == 3
  assert int(np.sum(metrics["num_ground_truth"])) == others
  # A JSON that lacks an evaluated video is an error naming the field.
  config = config_util.load_pipeline_config(
      data["config"], f'eval_config {{ annotations_path: "{annotations}" subset: "validation" }}')
  with pytest.raises(ValueError, match="annotations_path"):
    run_lib.run(config, model_dir, "eval")


def test_eval_without_checkpoint_fails_clearly(data, tmp_path):
  config = config_util.load_pipeline_config(data["config"])
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    run_lib.run(config, str(tmp_path / "empty"), "eval")


# train_main.py run as `python -m train_main` with the checkout on PYTHONPATH, not by its path:
# Python resolves a script's symlinks for sys.path[0], and under `bazel test` the script is a
# runfiles symlink into the source tree, whose tal_tf would shadow the one Bazel built.
TRAIN_MAIN = [sys.executable, "-m", "train_main"]


def test_train_main_killed_with_sigkill_resumes(data, tmp_path):
  """SIGKILL mid-training, restart: training resumes from the last checkpoint."""
  model_dir = str(tmp_path / "killed")
  override = ("train_config { checkpoint_every_n_steps: 4 steps_per_loop: 2 "
              "log_every_n_steps: 2 summary_every_n_steps: 2 }")
  cmd = TRAIN_MAIN + [f"--pipeline_config={data['config']}", f"--model_dir={model_dir}",
                      "--mode=train", f"--config_override={override}"]
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(cmd + ["--num_train_steps=100000"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 600
    while time.time() < deadline:
      ckpt = tf.train.latest_checkpoint(model_dir)
      if ckpt and int(ckpt.rsplit("-", 1)[1]) >= 8:
        break
      assert proc.poll() is None, "training exited early"
      time.sleep(0.2)
    else:
      pytest.fail("no checkpoint at step >= 8 within 600 s")
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  last = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
  assert last % 4 == 0
  target = last + 4
  result = subprocess.run(cmd + [f"--num_train_steps={target}"], env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"restored {model_dir}" in result.stderr and f"(step {last})" in result.stderr, (
      result.stderr[-3000:])
  assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{target}")


def test_train_main_reports_bad_config_clearly(tmp_path):
  bad = tmp_path / "bad.config"
  bad.write_text("model { tal_net { num_classes: 2 unknown_field: 3 } }")
  result = subprocess.run(
      TRAIN_MAIN + [f"--pipeline_config={bad}", f"--model_dir={tmp_path / 'm'}"],
      capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 2
  assert f"{bad}:1:" in result.stderr and "unknown_field" in result.stderr
  assert len(result.stderr.splitlines()) == 1, result.stderr


MIRRORED_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from tal_tf.training import train_lib
from tal_tf.utils import config_util
from tal_tf.utils import feature_rates
config = config_util.load_pipeline_config(
    sys.argv[1], 'train_config { distribution_strategy: "mirrored" }')
trainer = train_lib.Trainer(config, sys.argv[2], num_train_steps=2)
assert trainer.strategy.num_replicas_in_sync == 2, trainer.strategy.num_replicas_in_sync
print("final step", trainer.train())
"""


def test_mirrored_strategy_trains_on_two_replicas(data, tmp_path):
  """Batch of 2 split over 2 logical CPU replicas: per-replica batch 1, gradients averaged."""
  result = subprocess.run(
      [sys.executable, "-c", MIRRORED_SCRIPT, data["config"], str(tmp_path / "mirrored")],
      capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "final step 2" in result.stdout
  assert tf.train.latest_checkpoint(str(tmp_path / "mirrored")).endswith("ckpt-2")
