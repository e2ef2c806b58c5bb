"""ETP exports as a SavedModel of core TF ops (AN -> Algorithm 1 -> RN -> LN -> NMS) and the
loaded model reproduces the in-process detections for a padded batch."""
import os

import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from tal_tf.export import exporter_lib
from tal_tf.protos import pipeline_pb2

CONFIG = """
model { etp { num_classes: 3 streams: "rgb" streams: "flow" actionness_hidden_units: 8
  grouping_thresholds: [0.4, 0.6] max_length: 10 max_proposals: 12 unit_length: 2
  max_units: 4 refinement_hidden_units: 6 refinement_num_layers: 1 localization_hidden_units: 8
  nms { iou_threshold: 0.36 max_per_class: 5 max_total: 10 } } }
eval_input_reader { input_path: "unused" streams { name: "rgb" dim: 5 }
  streams { name: "flow" dim: 3 } }
export_config { max_detections: 10 }
"""


def test_export_core_ops_and_round_trip(tmp_path):
  tf.random.set_seed(3)
  config = text_format.Parse(CONFIG, pipeline_pb2.TrainEvalPipelineConfig())
  module = exporter_lib.build_detection_module(config)
  export_dir = os.path.join(tmp_path, "1")
  tf.saved_model.save(module, export_dir, signatures=module.signatures())
  ops = exporter_lib.check_core_ops(export_dir)  # raises on non-core ops
  assert "NonMaxSuppressionV5" in ops and "PyFunc" not in ops
  rng = np.random.default_rng(0)
  features = {"rgb": rng.normal(size=(2, 30, 5)).astype(np.float32),
              "flow": rng.normal(size=(2, 30, 3)).astype(np.float32)}
  features["rgb"][1, 18:] = 0.0
  features["flow"][1, 18:] = 0.0
  num_steps = np.array([30, 18], np.int32)
  fps = np.array([2.0, 2.0], np.float32)
  want = module.detect(features, num_steps, fps)
  loaded = tf.saved_model.load(export_dir)
  inputs = {**{k: tf.constant(v) for k, v in features.items()},
            "num_steps": tf.constant(num_steps), "feature_fps": tf.constant(fps)}
  got = loaded.signatures["serving_default"](**inputs)
  for key in ("detection_segments", "detection_scores", "detection_classes",
              "num_detections", "proposal_segments", "num_proposals"):
    np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-4, atol=1e-5)
  assert int(got["num_proposals"][0]) > 0
