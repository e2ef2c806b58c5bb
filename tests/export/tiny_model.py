"""A tiny TAL-Net pipeline (2 streams, 3 classes) and its checkpoint, shared by export and
inference tests."""
import os
import shutil

import numpy as np
import tensorflow as tf
import tf_keras

from tal_tf.builders import model_builder
from tal_tf.data import label_map_util
from tal_tf.export import exporter_lib
from tal_tf.utils import config_util
from tests import cli_util

STREAM_DIMS = {"rgb": 12, "flow": 8}
CLASS_NAMES = ("Jump", "Run", "Throw")
MAX_DETECTIONS = 15

CONFIG = """
model {
  tal_net {
    num_classes: 3
    streams: "rgb"
    streams: "flow"
    fusion: LATE
    feature_reduction_dim: 16
    num_filters: 16
    anchor_generator { multiscale_anchor_generator { scales: [1, 2, 4, 8] } }
    first_stage_nms { iou_threshold: 0.7 max_total: 40 }
    second_stage_nms { iou_threshold: 0.5 score_threshold: 0.001 max_per_class: 10 max_total: 20 }
  }
}
eval_input_reader {
  input_path: "unused.tfrecord"
  label_map_path: "%(label_map)s"
  streams { name: "rgb" dim: %(rgb_dim)d }
  streams { name: "flow" dim: %(flow_dim)d }
  shuffle: false
  repeat: false
}
export_config { max_detections: %(max_detections)d inference_window_steps: %(window)d
                inference_window_overlap: 0.25 }
"""


def write_pipeline(directory, window=0, stream_dims=None):
  """Writes label_map.pbtxt and pipeline.config into `directory`; returns the config path.
  stream_dims: {'rgb': D, 'flow': D} (default STREAM_DIMS)."""
  dims = stream_dims or STREAM_DIMS
  os.makedirs(directory, exist_ok=True)
  label_map = os.path.join(directory, "labels.pbtxt")
  label_map_util.write_label_map(
      label_map, [(i + 1, name) for i, name in enumerate(CLASS_NAMES)])
  path = os.path.join(directory, "pipeline.config")
  with open(path, "w") as f:
    f.write(CONFIG % dict(label_map=label_map, max_detections=MAX_DETECTIONS, window=window,
                          rgb_dim=dims["rgb"], flow_dim=dims["flow"]))
  return path


def write_checkpoint(config_path, model_dir, seed=7, stream_dims=None):
  """Builds the model with seeded random weights and saves a training-style checkpoint
  (model + optimizer, like train_lib) in `model_dir`; returns the prefix."""
  tf.random.set_seed(seed)
  tf_keras.utils.set_random_seed(seed)
  config = config_util.load_pipeline_config(config_path)
  model = model_builder.build(config.model)
  exporter_lib._build_variables(model, stream_dims or STREAM_DIMS)  # pylint: disable=protected-access
  optimizer = tf_keras.optimizers.Adam(1e-3)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=2)
  return manager.save()


def random_features(num_steps, seed):
  """{stream: float32 [T, D]} with a few strong 'action' bursts."""
  rng = np.random.default_rng(seed)
  out = {}
  for stream, dim in STREAM_DIMS.items():
    values = rng.normal(scale=0.5, size=(num_steps, dim)).astype(np.float32)
    for start in range(3, num_steps - 6, 17):
      values[start:start + 5] += rng.normal(scale=2.0, size=dim).astype(np.float32)
    out[stream] = values
  return out


def pad_batch(videos):
  """[{stream: [T_i, D]}] -> ({stream: [B, T_max, D]} zero padded, num_steps [B])."""
  lengths = [next(iter(v.values())).shape[0] for v in videos]
  t_max = max(lengths) if lengths else 0
  batch = {}
  for stream, dim in STREAM_DIMS.items():
    arr = np.zeros((len(videos), t_max, dim), np.float32)
    for i, v in enumerate(videos):
      arr[i, :lengths[i]] = v[stream]
    batch[stream] = arr
  return batch, np.asarray(lengths, np.int32)


_EXPORT = {}


def get_export(tmp_path_factory):
  """Exports the tiny model once per test session (through the CLI's `run`) and returns a
  dict: root, config_path, config, checkpoint (prefix), export_dir, module (in-process)."""
  if "export_dir" in _EXPORT:
    return _EXPORT
  root = str(tmp_path_factory.mktemp("tiny_export"))
  config_path, prefix, export_dir = export_tiny(root)
  config = config_util.load_pipeline_config(config_path)
  module = exporter_lib.build_detection_module(config, prefix)
  _EXPORT.update(root=root, config_path=config_path, config=config, checkpoint=prefix,
                 export_dir=export_dir, module=module)
  return _EXPORT


def export_tiny(root, stream_dims=None):
  """Writes the tiny pipeline (stream_dims, default STREAM_DIMS) and its checkpoint under
  `root` and exports it through the exporter CLI's `run`; returns (config_path, checkpoint
  prefix, export_dir)."""
  from tests.export import cli_loader  # pylint: disable=g-import-not-at-top
  config_path = write_pipeline(root, stream_dims=stream_dims)
  prefix = write_checkpoint(config_path, os.path.join(root, "train"), stream_dims=stream_dims)
  exporter_cli = cli_loader.load_exporter_cli()
  fv = cli_util.parse_flags(
      exporter_cli,
      f"--pipeline_config={config_path}",
      f"--trained_checkpoint_dir={os.path.join(root, 'train')}",
      f"--output_directory={os.path.join(root, 'serving')}")
  return config_path, prefix, exporter_cli.run(fv)


# The training rates of the rated export: two rates, as a converter with --frames_per_step
# gives for videos of two frame rates.
TRAINING_RATES = {"v1": 1.6, "v2": 2.0, "v3": 2.0}
_RATED = {}


def get_rated_export(tmp_path_factory):
  """The tiny model's checkpoint in a model_dir whose training_feature_fps.json records
  TRAINING_RATES (as training writes it), exported once per session with the library's
  exporter; returns dict: model_dir, summary, export_dir."""
  if "export_dir" in _RATED:
    return _RATED
  from tal_tf.utils import feature_rates  # pylint: disable=g-import-not-at-top
  base = get_export(tmp_path_factory)
  root = str(tmp_path_factory.mktemp("rated_export"))
  model_dir = os.path.join(root, "train")
  shutil.copytree(os.path.join(base["root"], "train"), model_dir)
  summary = feature_rates.summarize(TRAINING_RATES)
  summary.update(since_step=0, input_path=["train-*.tfrecord"])
  feature_rates.write_summary(model_dir, summary)
  export_dir = exporter_lib.export_saved_model(base["config"], model_dir,
                                               os.path.join(root, "serving"))
  _RATED.update(model_dir=model_dir, summary=summary, export_dir=export_dir)
  return _RATED
