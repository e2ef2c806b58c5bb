"""Export of a model that reads frames (S-CNN, C3D backbone): the serving signature takes
uint8 frames + num_frames + fps, checks them in the graph, equals the model run directly;
the tf_example signature decodes frame records; model_info.json records the inputs; the
inference loop feeds frames window by window."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import DetectionFields as DF
from tal_tf.data import sequence_example
from tal_tf.dataset_tools import create_frame_records
from tal_tf.dataset_tools import feature_readers
from tal_tf.export import exporter_lib
from tal_tf.inference import inference_lib
from tests.export import frames_model

H, W, FPS = frames_model.H, frames_model.W, frames_model.FPS


@pytest.fixture(scope="module")
def module():
  tf.keras.utils.set_random_seed(3)
  return exporter_lib.build_detection_module(frames_model.config())


def _frames(b, t, seed=0):
  return tf.cast(tf.random.stateless_uniform([b, t, H, W, 3], [seed, 1], maxval=256,
                                             dtype=tf.int32), tf.uint8)


def test_signature_takes_frames_and_matches_the_model(module):
  spec = module.feature_input_signature()
  assert list(spec) == ["frames", "num_frames", "fps"]
  assert spec["frames"].dtype == tf.uint8 and spec["frames"].shape.as_list() == [
      None, None, H, W, 3]
  serve = module.serving_function()
  frames = _frames(2, 40)
  out = serve({"frames": frames, "num_frames": tf.constant([40, 25]),
               "fps": tf.constant([FPS, FPS])})
  model = module.model
  direct = model.postprocess(model.predict({"frames": frames}, tf.constant([40, 25])),
                             tf.constant([40, 25]), tf.constant([FPS, FPS]))
  n = out[DF.num_detections].numpy()
  assert n.tolist() == direct[DF.num_detections].numpy().tolist() and n.min() > 0
  np.testing.assert_allclose(out[DF.detection_scores].numpy(),
                             direct[DF.detection_scores].numpy()[:, :10], rtol=1e-5)
  info = exporter_lib.model_info(model, module.stream_dims)
  assert info["inputs"] == {"lengths": "num_frames", "rate": "fps", "streams": {
      "frames": {"type": "frames", "height": H, "width": W, "fps": FPS}}}
  # T = 0 and B = 0: empty results, not errors.
  empty = serve({"frames": _frames(1, 0), "num_frames": tf.constant([0]),
                 "fps": tf.constant([FPS])})
  assert empty[DF.num_detections].numpy().tolist() == [0]


@pytest.mark.parametrize("frames, message", [
    (np.zeros([1, 8, H, W], np.uint8), "input frames must be uint8 [batch, T, 24, 32, 3]"),
    (np.zeros([1, 8, H, W + 1, 3], np.uint8), "must have frames of shape [24, 32, 3]"),
])
def test_bad_frames_fail_naming_the_input(module, frames, message):
  # Any shape gets through (as a C++ client's request can).
  fn = tf.function(lambda f, n, r: module.detect({"frames": f}, n, r), input_signature=[
      tf.TensorSpec(None, tf.uint8), tf.TensorSpec(None, tf.int32),
      tf.TensorSpec(None, tf.float32)])
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    fn(tf.constant(frames), tf.constant([8]), tf.constant([FPS]))
  assert message in str(error.value)


def test_tf_example_signature_decodes_frame_records(module):
  frames = _frames(1, 20, seed=4).numpy()[0]
  jpegs = [create_frame_records.encode_jpeg(f) for f in frames]
  record = sequence_example.make_frame_sequence_example(
      "v", 2.0, FPS, jpegs, [], [], [], height=H, width=W).SerializeToString()
  out = module.tf_example_function()({"examples": tf.constant([record])})
  decoded = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs])[np.newaxis]
  served = module.serving_function()({"frames": tf.constant(decoded),
                                      "num_frames": tf.constant([20]),
                                      "fps": tf.constant([FPS])})
  np.testing.assert_allclose(out[DF.detection_scores], served[DF.detection_scores], rtol=1e-5)
  assert out["video_id"].numpy().tolist() == [b"v"]


def test_inference_loop_feeds_frames_window_by_window(module):
  frames = _frames(1, 30, seed=5).numpy()[0]

  class Detector:
    stream_dims = {"frames": stream_spec.FrameStream(H, W, FPS)}
    max_detections = 10
    model_info = {"has_proposals": True}
    calls = []

    def __call__(self, features, num_steps, feature_fps):
      assert features["frames"].dtype == np.uint8
      self.calls.append(features["frames"].shape)
      out = module.serving_function()({"frames": tf.constant(features["frames"]),
                                       "num_frames": tf.constant(num_steps),
                                       "fps": tf.constant(feature_fps)})
      return {k: v.numpy() for k, v in out.items()}

  video = feature_readers.Video("v", 30, FPS, lambda a, b: {"frames": frames[a:b]}, "v")
  detector = Detector()
  result = inference_lib.run_inference(detector, [("v", video)], window_steps=16,
                                       window_overlap=0.5, batch_size=2)
  # Windows [0, 16), [8, 24), [14, 30) in batches of two, zero-padded uint8.
  assert detector.calls == [(2, 16, H, W, 3), (1, 16, H, W, 3)]
  segments = result.detections["v"]["segments"]
  assert len(segments) > 0 and segments.min() >= 0 and segments.max() <= 3.0 + 1e-6
