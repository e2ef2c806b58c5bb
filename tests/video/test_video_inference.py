"""`infer_main --video`: decode -> features -> exported tiny TAL-Net -> results JSON and a
timeline PNG, equal to running the same detector on features extracted beforehand."""
import json
import os
import types

import numpy as np
import pytest

from tal_tf.dataset_tools import extract_features
from tal_tf.evaluation import io as eval_io
from tal_tf.dataset_tools import feature_readers
from tal_tf.inference import infer_main
from tal_tf.inference import video_source
from tal_tf.video import feature_extraction as fe
from tal_tf.video import synthetic
from tests import cli_util
from tests.export import tiny_model

DIMS = {"rgb": 16, "flow": 16}  # Model Garden ResNet-18 at depth_multiplier 1/32.


def _flags(module, *args):
  return cli_util.parse_flags(module, *args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("video_inference"))
  _, _, export_dir = tiny_model.export_tiny(os.path.join(root, "model"), DIMS)
  videos = os.path.join(root, "videos")
  os.makedirs(videos)
  for i, seconds in enumerate((6.0, 4.0)):
    synthetic.write_video(os.path.join(videos, f"movie_{i}.mp4"), int(seconds * 20), 20, 64,
                          48, actions=[(1.0, 3.0, i)])
  features = os.path.join(root, "features")
  fv = _flags(extract_features, f"--videos={videos}", f"--output={features}",
              "--streams=rgb,flow", "--fps=8", "--snippet_frames=4", "--frames_per_snippet=2",
              "--input_size=32", "--model_id=18", "--depth_multiplier=0.03125",
              "--random_init")
  extractor = fe.FeatureExtractor.from_spec(extract_features.spec_from_flags(fv))
  summary = extract_features.extract_videos(videos, features, extractor, progress_stream=None)
  assert len(summary["written"]) == 2
  return dict(root=root, export_dir=export_dir, videos=videos, features=features,
              spec=os.path.join(features, fe.SPEC_NAME), extractor=extractor)


def test_video_folder_to_results_and_timeline(setup, tmp_path):
  output = str(tmp_path / "results.json")
  png = str(tmp_path / "timeline.png")
  annotations = tmp_path / "gt.json"   # Ground truth drawn above the detections.
  annotations.write_text(json.dumps({"database": {
      f"movie_{i}": {"subset": "test", "duration": d,
                     "annotations": [{"segment": [1.0, 3.0], "label": "Run"}]}
      for i, d in enumerate((6.0, 4.0))}}))
  result = infer_main.run(_flags(
      infer_main, f"--saved_model_dir={setup['export_dir']}", f"--video={setup['videos']}",
      f"--feature_extractor={setup['spec']}", f"--output={output}", f"--timeline_png={png}",
      f"--annotations={annotations}", "--subset=test"))
  assert sorted(result.detections) == ["movie_0", "movie_1"] and not result.skipped

  # Independent path: the same detector on the features extract_features wrote.
  reference = str(tmp_path / "reference.json")
  infer_main.run(_flags(
      infer_main, f"--saved_model_dir={setup['export_dir']}",
      f"--features=rgb:{setup['features']}/rgb,flow:{setup['features']}/flow",
      "--feature_fps=2", f"--output={reference}"))
  got, want = eval_io.load_results(output), eval_io.load_results(reference)
  assert sorted(got) == sorted(want)
  for video_id in want:
    assert len(got[video_id]["scores"]) == len(want[video_id]["scores"]) > 0
    np.testing.assert_allclose(got[video_id]["segments"], want[video_id]["segments"],
                               atol=1e-4)
    np.testing.assert_allclose(got[video_id]["scores"], want[video_id]["scores"], atol=1e-5)
    assert list(got[video_id]["labels"]) == list(want[video_id]["labels"])
    assert set(got[video_id]["labels"]) <= set(tiny_model.CLASS_NAMES)
    # Seconds: inside the video (6 s and 4 s long, 2 feature steps per second).
    assert np.all(got[video_id]["segments"] >= -1e-6)
  with open(output) as f:
    first = json.load(f)["results"]["movie_0"][0]
  assert set(first) == {"segment", "label", "score"}

  from matplotlib import image as mpimg  # pylint: disable=g-import-not-at-top
  picture = mpimg.imread(png)
  assert picture.ndim == 3 and picture.shape[0] > 50 and picture.shape[1] > 300
  assert picture[..., :3].std() > 0.05  # Not a blank canvas.


def test_video_source_single_file_bad_video_and_mismatched_extractor(setup, tmp_path):
  extractor = setup["extractor"]
  path = os.path.join(setup["videos"], "movie_1.mp4")
  (video_id, video), = list(video_source.VideoSource(path, extractor, DIMS))
  assert video_id == "movie_1" and video.num_steps == 8 and video.feature_fps == 2.0
  reference = np.load(os.path.join(setup["features"], "rgb", "movie_1.npy"))
  np.testing.assert_allclose(video.read(2, 5)["rgb"], reference[2:5], rtol=1e-5, atol=1e-6)

  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "bad.mp4").write_bytes(b"not a video" * 100)
  (video_id, error), = list(video_source.VideoSource(str(broken), extractor, DIMS))
  assert video_id == "bad" and isinstance(error, feature_readers.FeatureError)
  assert "video_unreadable" in str(error) and "bad.mp4" in str(error)

  rgb_only = types.SimpleNamespace(stream_dims={"rgb": 16})
  with pytest.raises(ValueError, match="the model reads"):
    video_source.VideoSource(path, rgb_only, DIMS)
