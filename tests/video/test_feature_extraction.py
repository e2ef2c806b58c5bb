"""Feature extraction: snippet plan and rate, features equal to the backbone applied by hand
(random init, checkpoint restore, SavedModel), flow images, and the CLI (resume, skips)."""
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tal_tf.dataset_tools import extract_features
from tal_tf.video import decoding
from tal_tf.video import feature_extraction as fe
from tests import cli_util

TINY = dict(backbone="resnet", model_id=18, depth_multiplier=0.03125, random_init=True)
SIZE = 32


def _reference(path, backbone, fps, snippet, stride, per_snippet):
  """Numpy composition of the documented steps: decode all, crop, sample, embed, average."""
  short = round(SIZE * 256 / 224)
  _, frames = decoding.decode_all(path, fps=fps, short_side=short)
  crops = np.stack([fe.center_crop(f, SIZE) for f in frames])
  n = len(crops)
  rows = []
  for start in range(0, n, stride):
    idx = [min(start + int(math.floor((i + 0.5) * snippet / per_snippet)), n - 1)
           for i in range(per_snippet)]
    rows.append(backbone(crops[idx]).mean(axis=0))
  return np.stack(rows), n


def test_snippet_plan_helpers():
  assert fe.snippet_starts(10, 4) == [0, 4, 8]
  np.testing.assert_array_equal(fe.snippet_sample(8, 4, 2, 10), [9, 9])   # 9, 11 -> clamped.
  np.testing.assert_array_equal(fe.snippet_sample(0, 16, 4, 100), [2, 6, 10, 14])


def test_rgb_features_shape_rate_and_values(videos):
  # Overlapping snippets (stride < length) and a partial last snippet.
  snippet, stride, per_snippet = 6, 3, 3
  extractor = fe.FeatureExtractor.from_spec(fe.spec_for(
      {"rgb": TINY}, fps=10, snippet_frames=snippet, snippet_stride=stride,
      frames_per_snippet=per_snippet, input_size=SIZE, batch_snippets=3))
  path = videos["mpeg4"]["path"]   # 50 frames at 25 fps = 2 s -> 20 frames at 10 fps.
  out = extractor.extract(path)
  expected, n = _reference(path, extractor.backbones["rgb"], 10, snippet, stride, per_snippet)
  assert n == 20
  assert out["rgb"].shape == (math.ceil(20 / stride), 16) == expected.shape
  assert extractor.feature_fps == pytest.approx(10 / stride)
  np.testing.assert_allclose(out["rgb"], expected, rtol=1e-4, atol=1e-5)


def test_checkpoint_restore_and_saved_model_backbones(videos, tmp_path):
  model = fe.GardenResNet(model_id=18, depth_multiplier=0.03125, random_init=True, seed=11)
  prefix = tf.train.Checkpoint(backbone=model.model).write(str(tmp_path / "bb" / "ckpt"))
  spec = dict(TINY, random_init=False, checkpoint=prefix)
  restored = fe.build_backbone(spec)
  frames = np.random.default_rng(0).integers(0, 255, (3, SIZE, SIZE, 3), dtype=np.uint8)
  np.testing.assert_allclose(restored(frames), model(frames), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="random_init for tests|needs weights"):
    fe.build_backbone(dict(TINY, random_init=False))

  # An image SavedModel [N, H, W, 3] in [0, 1] -> {"embedding": [N, 5]}.
  inputs = tf_keras.Input([None, None, 3])
  pooled = tf_keras.layers.GlobalAveragePooling2D()(
      tf_keras.layers.Conv2D(5, 3, activation="relu")(inputs))
  keras_model = tf_keras.Model(inputs, pooled)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  def serve(images):
    return {"embedding": keras_model(images), "other": tf.reduce_mean(images, [1, 2])}
  saved = str(tmp_path / "image_model")
  tf.saved_model.save(keras_model, saved, signatures={"serving_default": serve})
  backbone = fe.SavedModelBackbone(saved, "embedding")
  assert backbone.dim == 5
  np.testing.assert_allclose(backbone(frames), keras_model(frames / 255.0).numpy(), rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="--output_tensor"):
    fe.SavedModelBackbone(saved)


def test_flow_images_follow_the_motion():
  flow = np.zeros((4, 4, 2), np.float32)
  flow[..., 0] = 10.0   # Half the bound to the right.
  flow[..., 1] = -40.0  # Beyond the bound, upwards: clipped.
  image = fe.flow_image(flow, bound=20.0)
  assert image[0, 0].tolist() == [round(127.5 + 63.75), 0, 255]
  # A textured image shifted right by 3 pixels: DIS finds +3 in x, ~0 in y inside.
  rng = np.random.default_rng(1)
  base = (rng.random((12, 16)) > 0.5).repeat(4, 0).repeat(4, 1).astype(np.uint8) * 200
  first = np.stack([base] * 3, -1)
  second = np.roll(first, 3, axis=1)
  computer = fe.FlowComputer("dis", bound=20.0)
  zero = computer(first)
  assert np.all(zero[..., :2] == 128) and np.all(zero[..., 2] == 0)
  moved = computer(second)[8:-8, 8:-8].astype(np.float32)
  dx = (moved[..., 0] - 127.5) / 127.5 * 20.0
  dy = (moved[..., 1] - 127.5) / 127.5 * 20.0
  assert abs(np.median(dx) - 3.0) < 0.6 and abs(np.median(dy)) < 0.6


def _cli(*args):
  return cli_util.parse_flags(extract_features, *args)


def test_cli_writes_resumes_and_skips(videos, tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  for name in ("h264", "mjpeg", "truncated"):
    src = videos[name]["path"]
    os.symlink(src, folder / os.path.basename(src))
  out = str(tmp_path / "features")
  fv = _cli(f"--videos={folder}", f"--output={out}", "--streams=rgb,flow", "--fps=8",
            "--snippet_frames=4", "--frames_per_snippet=2", f"--input_size={SIZE}",
            "--model_id=18", "--depth_multiplier=0.03125", "--random_init")
  extractor = fe.FeatureExtractor.from_spec(extract_features.spec_from_flags(fv))
  summary = extract_features.extract_videos(str(folder), out, extractor, progress_stream=None)
  assert summary["written"] == ["clip_h264", "clip_mjpeg"]
  assert summary["skipped"]["truncated"].startswith("video_truncated")
  for stream in ("rgb", "flow"):
    h264 = np.load(os.path.join(out, stream, "clip_h264.npy"))
    # 2 s at 8 fps = 16 frames -> 4 snippets; 2 s of mjpeg (40 frames at 20 fps) likewise.
    assert h264.shape == (4, 16) and h264.dtype == np.float32
  spec = json.load(open(os.path.join(out, fe.SPEC_NAME)))
  assert spec["feature_fps"] == 2.0 and spec["stream_dims"] == {"rgb": 16, "flow": 16}
  # Flow features come from other inputs (and another backbone) than rgb ones.
  assert not np.allclose(np.load(os.path.join(out, "flow", "clip_h264.npy")),
                         np.load(os.path.join(out, "rgb", "clip_h264.npy")), atol=1e-3)
  mtime = os.path.getmtime(os.path.join(out, "rgb", "clip_h264.npy"))
  os.remove(os.path.join(out, "flow", "clip_mjpeg.npy"))  # An interrupted video.
  again = extract_features.extract_videos(str(folder), out, extractor, progress_stream=None)
  assert again["resumed"] == ["clip_h264"] and again["written"] == ["clip_mjpeg"]
  assert os.path.getmtime(os.path.join(out, "rgb", "clip_h264.npy")) == mtime
  assert not [n for d in ("rgb", "flow") for n in os.listdir(os.path.join(out, d))
              if ".tmp-" in n]
  other = fe.FeatureExtractor(extractor.backbones, fps=5, snippet_frames=4,
                              frames_per_snippet=2, input_size=SIZE,
                              specs=spec["streams"])
  with pytest.raises(ValueError, match="other settings"):
    extract_features.extract_videos(str(folder), out, other, progress_stream=None)


class _ClipMean:
  """A stand-in video backbone: [S, L, H, W, 3] -> per-snippet channel means [S, 3]."""
  input_kind = "clip"
  dim = 3

  def __call__(self, clips):
    return np.asarray(clips, np.float32).mean(axis=(1, 2, 3))


def test_clip_backbones_get_whole_snippets(videos):
  extractor = fe.FeatureExtractor({"rgb": _ClipMean()}, fps=10, snippet_frames=4,
                                  frames_per_snippet=4, input_size=SIZE, batch_snippets=2)
  path = videos["h264"]["path"]   # 2 s -> 20 frames at 10 fps -> 5 snippets.
  out = extractor.extract(path)["rgb"]
  _, frames = decoding.decode_all(path, fps=10, short_side=round(SIZE * 256 / 224))
  crops = np.stack([fe.center_crop(f, SIZE) for f in frames]).astype(np.float32)
  expected = crops.reshape(5, 4, SIZE, SIZE, 3).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(out, expected, rtol=1e-5)
