"""A tiny model reading frames (S-CNN with a narrow C3D backbone), built or exported with
seeded random weights in seconds, for the export, inference and serving tests."""
import os

import tensorflow as tf
import tf_keras
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.export import exporter_lib
from tal_tf.protos import pipeline_pb2

H, W, FPS = 24, 32, 10.0
CONFIG = """
model { scnn { num_classes: 2 streams: "frames" backbone: C3D fc6_units: 8 fc7_units: 8
  c3d { width_multiplier: 0.0625 crop_size: 16 inference_chunk: 5 }
  proposal_score_threshold: 0.0 max_detections: 10 max_proposals: 20
  anchor_generator { sliding_window_anchor_generator {
    window_lengths: [8, 16] overlap: 0.5 frames_per_step: 1 } } } }
train_config { seed: 1 }
eval_input_reader { input_path: "unused" streams { name: "frames" type: FRAMES
  frame_height: 24 frame_width: 32 frame_rate: 10 } }
"""


def config():
  """The pipeline config of the tiny frames model."""
  return text_format.Parse(CONFIG, pipeline_pb2.TrainEvalPipelineConfig())


def export_untrained(pipeline_config, root, seed=3):
  """Builds the model of `pipeline_config` with seeded random weights, saves them under
  <root>/train and exports them to <root>/serving; returns the version directory."""
  tf.random.set_seed(seed)
  tf_keras.utils.set_random_seed(seed)
  model = model_builder.build(pipeline_config.model)
  dims = exporter_lib.stream_dims_from_config(pipeline_config, model)
  exporter_lib._build_variables(model, dims)  # pylint: disable=protected-access
  train_dir = os.path.join(str(root), "train")
  tf.train.Checkpoint(model=model).save(os.path.join(train_dir, "ckpt"))
  return exporter_lib.export_saved_model(pipeline_config, train_dir,
                                         os.path.join(str(root), "serving"))
