"""ETP builder: defaults are the paper's, bad values fail naming the field, ablations build."""
import glob
import os

import pytest
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.matchers import three_way_matcher
from tal_tf.protos import model_pb2
from tal_tf.utils import config_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABLATIONS = sorted(glob.glob(os.path.join(REPO, "configs", "etp_ablations", "*.config")))


def _build(text):
  return model_builder.build(text_format.Parse(text, model_pb2.Model()))


def test_defaults_are_the_papers():
  model = _build('etp { num_classes: 20 streams: "rgb" }')
  assert isinstance(model._matcher, three_way_matcher.ThreeWayMatcher)
  assert model._matcher._positive_threshold == pytest.approx(0.7)
  assert model._matcher._incomplete_threshold == pytest.approx(0.3)
  assert model._matcher._background_threshold == pytest.approx(0.1)
  assert model._nms_iou == pytest.approx(0.36) and model._per_class_nms
  assert model._unit_stride == model._unit_length / 2
  assert model._rn.hidden_units == 512 and model._rn.num_layers == 2
  assert model._ln.course_parts == (1, 2, 3)  # start | course, course halves | end
  assert model._incomplete_ratio == 4.0 and model._background_ratio == 1.0
  assert model._hard_fraction == 0.25
  assert model.training_phases == ("actionness", "refinement", "localization")


@pytest.mark.parametrize("text,field", [
    ('etp { streams: "rgb" }', "num_classes"),
    ("etp { num_classes: 2 }", "streams"),
    ('etp { num_classes: 2 streams: "rgb" min_length: 5 max_length: 5 }', "max_length"),
    ('etp { num_classes: 2 streams: "rgb" unit_length: 0 }', "unit_length"),
    ('etp { num_classes: 2 streams: "rgb" course_levels: 0 }', "course_levels"),
])
def test_bad_values_name_the_field(text, field):
  with pytest.raises(ValueError, match=field):
    _build(text)


@pytest.mark.parametrize("path", ABLATIONS, ids=os.path.basename)
def test_ablation_overrides_build(path):
  with open(path) as f:
    override = f.read()
  config = config_util.load_pipeline_config(os.path.join(REPO, "configs",
                                                         "etp_embedded.config"), override)
  model = model_builder.build(config.model)
  name = os.path.basename(path)
  if name.startswith("tab3_rgb."):
    assert model.stream_names == ("rgb",)
  if name.startswith("fig5"):
    assert model.training_phases == ("actionness", "localization")
  if name.startswith("fig6"):
    assert model._ln.non_local is None
  if name.startswith("fig7_unit_128"):
    assert model._unit_length == 8 and model._unit_stride == 4


FRAMES = 'etp {{ num_classes: 4 streams: "rgb" frame_actionness {{ {} }} }}'


def test_frame_actionness_defaults_are_the_papers():
  model = _build(FRAMES.format('pretrained_checkpoint: "/ckpt/resnet34_imagenet"'))
  network = model._an
  assert (network.model_id, network.depth_multiplier, network.crop_size) == (34, 1.0,
                                                                              (224, 224))
  assert model.frames_stream == "frames" and model.stream_names == ("rgb", "frames")
  assert model._pretrained_checkpoint == "/ckpt/resnet34_imagenet"
  assert model.phase_stream_names("actionness") == ("frames",)
  # The features head is the default.
  assert model_builder.build(text_format.Parse('etp { num_classes: 4 streams: "rgb" }',
                                               model_pb2.Model())).frames_stream is None


@pytest.mark.parametrize("inner,match", [
    ("", "pretrained_checkpoint.*random_init"),
    ('pretrained_checkpoint: "/x" random_init: true', "exactly one"),
    ('random_init: true frames_stream: ""', "frames_stream"),
    ('random_init: true frames_stream: "rgb"', "feature stream"),
    ('random_init: true proposal_input_reader { streams { name: "rgb" dim: 4 } }',
     "proposal_input_reader.streams"),
])
def test_frame_actionness_errors_name_the_field(inner, match):
  with pytest.raises(ValueError, match=match):
    _build(FRAMES.format(inner))


def test_frame_actionness_proposal_reader_reads_whole_videos_once(monkeypatch):
  from tal_tf.builders import etp_builder  # pylint: disable=g-import-not-at-top
  seen = {}
  monkeypatch.setattr(etp_builder.input_reader_builder, "build",
                      lambda reader, **kwargs: seen.update(reader=reader, **kwargs))
  model = _build(FRAMES.format(
      'random_init: true model_id: 18 depth_multiplier: 0.25 proposal_input_reader { '
      'input_path: "frames/train-*.tfrecord" '
      'streams { name: "frames" type: FRAMES frame_height: 8 frame_width: 8 } '
      'batch_size: 4 shuffle: true repeat: true }'))
  assert not seen  # built when the proposals are made, not with the model
  model._proposal_frames_fn()
  assert list(seen["reader"].input_path) == ["frames/train-*.tfrecord"]
  assert not seen["reader"].shuffle and not seen["reader"].repeat
  assert not seen["is_training"] and seen["batch_size"] == 1 and seen["num_classes"] == 4
