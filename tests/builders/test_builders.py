"""Builders: every shipped config builds; each oneof choice maps to the right component."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from tal_tf.anchor_generators import multiscale_anchor_generator
from tal_tf.anchor_generators import sliding_window_anchor_generator
from tal_tf.builders import anchor_generator_builder
from tal_tf.builders import matcher_builder
from tal_tf.builders import model_builder
from tal_tf.builders import optimizer_builder
from tal_tf.builders import sampler_builder
from tal_tf.builders import segment_coder_builder
from tal_tf.core import stream_spec
from tal_tf.matchers import argmax_matcher
from tal_tf.matchers import three_way_matcher
from tal_tf.protos import anchor_generator_pb2
from tal_tf.protos import matcher_pb2
from tal_tf.protos import model_pb2
from tal_tf.protos import optimizer_pb2
from tal_tf.protos import sampler_pb2
from tal_tf.protos import segment_coder_pb2
from tal_tf.utils import config_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.config"))))
def test_every_shipped_config_builds_and_runs(path):
  config = config_util.load_pipeline_config(path)
  model = model_builder.build(config.model)
  dims = config_util.stream_dims(config.train_input_reader)
  # 20 steps of each stream (feature vectors or, for a frames stream, frames).
  feats = {s: stream_spec.dummy_input(d, steps=20) for s, d in dims.items()}
  # Streams only some phases read (ETP's frames at their own rate): a few frames.
  for name, reader in config_util.input_readers(config):
    for s, d in config_util.stream_dims(reader).items():
      if s in model.stream_names and s not in feats:
        feats[s] = stream_spec.dummy_input(d, steps=2)
  preds = model.predict(feats, tf.constant([20]))
  dets = model.postprocess(preds, tf.constant([20]), tf.constant([1.0]))
  arch = config.model.WhichOneof("model")
  assert model.num_classes == getattr(config.model, arch).num_classes
  if arch == "tal_net":
    assert preds["class_logits"].shape[-1] == model.num_classes + 1
  assert int(dets["num_detections"][0]) >= 0


def _parse(message, text):
  return text_format.Parse(text, message)


def test_anchor_generator_builder():
  gen = anchor_generator_builder.build(_parse(
      anchor_generator_pb2.AnchorGenerator(),
      "multiscale_anchor_generator { scales: [1, 2, 4] }"))
  assert isinstance(gen, multiscale_anchor_generator.MultiscaleAnchorGenerator)
  np.testing.assert_allclose(gen.generate(2).numpy(),
                             [[0, 1], [-0.5, 1.5], [-1.5, 2.5], [1, 2], [0.5, 2.5], [-0.5, 3.5]])
  gen = anchor_generator_builder.build(_parse(
      anchor_generator_pb2.AnchorGenerator(),
      "sliding_window_anchor_generator { window_lengths: [16] overlap: 0.5 "
      "frames_per_step: 8 }"))
  assert isinstance(gen, sliding_window_anchor_generator.SlidingWindowAnchorGenerator)
  # 16-frame windows = 2 steps, stride 1 step, fully inside a 4-step video: 3 windows.
  np.testing.assert_allclose(gen.generate(4).numpy(), [[0, 2], [1, 3], [2, 4]])
  with pytest.raises(ValueError, match="anchor_generator"):
    anchor_generator_builder.build(anchor_generator_pb2.AnchorGenerator())


def test_segment_coder_builder_uses_configured_scales():
  coder = segment_coder_builder.build(_parse(
      segment_coder_pb2.SegmentCoder(),
      "center_length_coder { center_scale: 2.0 length_scale: 1.0 }"))
  anchors = tf.constant([[0.0, 4.0]])
  codes = coder.encode(tf.constant([[1.0, 9.0]]), anchors).numpy()
  # center 5 vs 2 over length 4 -> 0.75 * 2; log(8 / 4) * 1.
  np.testing.assert_allclose(codes, [[1.5, np.log(2.0)]], rtol=1e-6)
  default = segment_coder_builder.build(segment_coder_pb2.SegmentCoder())
  np.testing.assert_allclose(default.encode(tf.constant([[1.0, 9.0]]), anchors).numpy(),
                             [[7.5, 5 * np.log(2.0)]], rtol=1e-6)


def test_matcher_builder():
  m = matcher_builder.build(_parse(matcher_pb2.Matcher(), """
      argmax_matcher { matched_threshold: 0.6 unmatched_threshold: 0.2
                       force_match_for_each_groundtruth: false }"""))
  assert isinstance(m, argmax_matcher.ArgMaxMatcher)
  sim = tf.constant([[[0.65], [0.4], [0.1]]])
  np.testing.assert_array_equal(m.match(sim, tf.constant([1])).match_results.numpy(),
                                [[0, -2, -1]])
  three = matcher_builder.build(_parse(matcher_pb2.Matcher(), "three_way_matcher {}"))
  assert isinstance(three, three_way_matcher.ThreeWayMatcher)
  with pytest.raises(ValueError, match="matcher"):
    matcher_builder.build(matcher_pb2.Matcher())


def test_sampler_builder():
  s = sampler_builder.build(sampler_pb2.BalancedSampler(batch_size=8, positive_fraction=0.25))
  labels = tf.constant([[True] * 10 + [False] * 10])
  picked = s.subsample(tf.ones_like(labels), labels, seed=3).numpy()
  assert picked.sum() == 8 and picked[0, :10].sum() == 2


def test_optimizer_builder_adam_constant_and_warmup():
  opt, lr = optimizer_builder.build(_parse(optimizer_pb2.Optimizer(), """
      adam { beta_1: 0.8 }
      learning_rate { constant { learning_rate: 0.01 } warmup_steps: 4 }"""))
  assert type(opt).__name__ == "Adam"
  np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 3, 4, 10)],
                             [0.0025, 0.005, 0.01, 0.01, 0.01], rtol=1e-6)
  default_opt, default_lr = optimizer_builder.build(optimizer_pb2.Optimizer())
  assert type(default_opt).__name__ == "Adam"
  np.testing.assert_allclose(float(default_lr(0)), 1e-4, rtol=1e-6)  # TAL-Net's Adam 1e-4


def test_piecewise_schedule_validates_lengths():
  with pytest.raises(ValueError, match="piecewise_constant"):
    optimizer_builder.build(_parse(optimizer_pb2.Optimizer(), """
        learning_rate { piecewise_constant { boundaries: [10] values: [0.1] } }"""))


def test_missing_or_unknown_meta_architectures_fail_clearly():
  with pytest.raises(ValueError, match="meta-architecture"):
    model_builder.build(model_pb2.Model())
  config = model_pb2.Model()
  config.external.module = "tal_tf.builders.meta_arch_registry"
  config.external.name = "nonexistent"
  with pytest.raises(KeyError, match="registered: .*etp.*scnn.*tal_net.*wtal"):
    model_builder.build(config)
  config.external.module = "no_such_module_anywhere"
  with pytest.raises(ValueError, match="cannot import 'no_such_module_anywhere'"):
    model_builder.build(config)


def test_non_integer_tal_net_scale_is_rejected():
  config = config_util.parse_pipeline_text(
      'model { tal_net { num_classes: 2 streams: "rgb" anchor_generator { '
      'multiscale_anchor_generator { scales: [1, 2.5] } } } }')
  with pytest.raises(ValueError, match="whole numbers"):
    model_builder.build(config.model)


@pytest.mark.parametrize("plan,rounding", [("", "exact"), ("spn_tower_plan: ODD_SPAN", "odd"),
                                           ("spn_tower_plan: PAPER_LITERAL", "paper")])
def test_tal_net_spn_tower_plan_reaches_the_spn(plan, rounding):
  config = config_util.parse_pipeline_text(
      'model { tal_net { num_classes: 2 streams: "rgb" streams: "flow" anchor_generator { '
      'multiscale_anchor_generator { scales: [1, 4, 16] } } %s } }' % plan)
  model = model_builder.build(config.model)
  spns = model._spns  # pylint: disable=protected-access
  assert len(spns) == 2 and all(spn.rounding == rounding for spn in spns)
  # The towers built are that plan's: scale 16 with context (span 32).
  expected = {"exact": (4, (3, 3), (4, 10)), "odd": None, "paper": (5, (3, 3), (5, 10))}
  if expected[rounding]:
    assert tuple(spns[0].plans[2]) == expected[rounding]


def test_tal_net_spn_tower_plan_needs_dilated_towers():
  config = config_util.parse_pipeline_text(
      'model { tal_net { num_classes: 2 streams: "rgb" spn_variant: MULTI_TCONV '
      'spn_context: false spn_tower_plan: PAPER_LITERAL } }')
  with pytest.raises(ValueError, match="spn_tower_plan"):
    model_builder.build(config.model)
