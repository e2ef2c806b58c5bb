"""`infer_main` on a model reading feature streams and a frames stream (ETP with the frame
Actionness Network): features from .npy files and frames decoded from --video, matched by
video id; the CLI's detections equal the exported signature run on the same inputs; a
video lacking either part is skipped and named; long videos run in windows, each with the
frames of its time span."""
import json
import os

from absl import app
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.data import label_map_util
from tal_tf.evaluation import io as eval_io
from tal_tf.export import exporter_lib
from tal_tf.inference import infer_main
from tal_tf.inference import inference_lib
from tal_tf.inference import video_source
from tal_tf.inference import windowing
from tal_tf.utils import config_util
from tal_tf.video import synthetic
from tests import cli_util
from tests.export import frames_model
from tests.export import serving_stand_ins

H, W = 36, 40
FRAME_FPS, FEATURE_FPS = 4.0, 2.0
# video id -> seconds; "orphan" has a video file but no features, "nofile" the reverse.
VIDEOS = {"v1": 6.0, "v2": 4.5, "orphan": 3.0}
FEATURES = {"v1": 6.0, "v2": 4.5, "nofile": 3.0}
NAMES = {1: "Jump", 2: "Throw"}


def _config_text(root, label_map):
  frames = (f'streams {{ name: "frames" type: FRAMES frame_height: {H} frame_width: {W} '
            f'frame_rate: {FRAME_FPS} }}')
  reader = f'input_path: "{root}/frames.tfrecord" label_map_path: "{label_map}" {frames}'
  features = (f'input_path: "{root}/features.tfrecord" label_map_path: "{label_map}" '
              'streams { name: "rgb" dim: 4 } batch_size: 1')
  return f"""
model {{ etp {{ num_classes: 2 streams: "rgb" refinement_hidden_units: 8
  localization_hidden_units: 8 max_proposals: 8 max_units: 4 max_length: 10 unit_length: 2
  grouping_thresholds: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] smoothing_sigma: 1.0
  frame_actionness {{ model_id: 10 depth_multiplier: 0.25 crop_size: 32 random_init: true
    frames_per_call: 16
    proposal_input_reader {{ {reader} }} eval_input_reader {{ {reader} }} }} }} }}
train_config {{
  optimizer {{ momentum {{ momentum: 0.9 }} learning_rate {{ constant {{ learning_rate: 0.01 }} }} }}
  phases {{ name: "actionness" num_steps: 1 input_reader {{ {reader} batch_size: 2 }} }}
  phases {{ name: "refinement" num_steps: 1 }}
  phases {{ name: "localization" num_steps: 1 }} }}
train_input_reader {{ {features} }}
eval_input_reader {{ {features} shuffle: false repeat: false }}
"""


def _flags(*args):
  return cli_util.parse_flags(infer_main, *args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A seeded (untrained) ETP with the frame AN exported; its videos and .npy features."""
  root = tmp_path_factory.mktemp("etp_mixed")
  label_map = str(root / "label_map.pbtxt")
  label_map_util.write_label_map(label_map, NAMES.items())
  config_path = str(root / "etp.config")
  with open(config_path, "w") as f:
    f.write(_config_text(root, label_map))
  config = config_util.load_pipeline_config(config_path)
  export_dir = frames_model.export_untrained(config, root)
  videos = root / "videos"
  videos.mkdir()
  for i, (video_id, seconds) in enumerate(VIDEOS.items()):
    synthetic.write_video(str(videos / f"{video_id}.mp4"), int(seconds * 10), 10, 64, 48,
                          actions=[(1.0, 2.5, i % 2)])
  rgb = root / "rgb"
  rgb.mkdir()
  rng = np.random.default_rng(0)
  for video_id, seconds in FEATURES.items():
    np.save(str(rgb / f"{video_id}.npy"),
            rng.normal(size=(int(seconds * FEATURE_FPS), 4)).astype(np.float32))
  serving = tf.saved_model.load(export_dir)
  return dict(root=root, export_dir=export_dir, videos=str(videos), rgb=str(rgb),
              config_path=config_path,
              serving=serving, served={},
              detector=inference_lib.SavedModelDetector(export_dir))


@pytest.fixture
def loaded_once(setup, monkeypatch):
  """The CLI with the fixture's detector (loading the SavedModel takes seconds)."""
  monkeypatch.setattr(infer_main, "load_detector", lambda fv: setup["detector"])


def _cli_flags(setup, output, *extra):
  return _flags(f"--saved_model_dir={setup['export_dir']}", f"--features=rgb:{setup['rgb']}",
                f"--feature_fps={FEATURE_FPS}", f"--video={setup['videos']}",
                f"--output={output}", *extra)


def _served(setup, video_id):
  """The exported serving_default run on one video: its .npy features and its frames
  decoded the way a frames-only model's are (FrameVideoSource)."""
  if video_id in setup["served"]:
    return setup["served"][video_id]
  fn = setup["serving"].signatures[exporter_lib.SERVING_SIGNATURE]
  spec = stream_spec.FrameStream(H, W, FRAME_FPS)
  (_, decoded), = list(video_source.FrameVideoSource(setup["videos"], {"frames": spec},
                                                     video_ids=[video_id]))
  frames = decoded.read(0, decoded.num_steps)["frames"][np.newaxis]
  rgb = np.load(os.path.join(setup["rgb"], f"{video_id}.npy"))[np.newaxis]
  out = fn(rgb=tf.constant(rgb), num_steps=tf.constant([rgb.shape[1]], tf.int32),
           feature_fps=tf.constant([FEATURE_FPS]), frames=tf.constant(frames),
           num_frames=tf.constant([frames.shape[1]], tf.int32), fps=tf.constant([FRAME_FPS]))
  out = {k: v.numpy()[0] for k, v in out.items()}
  n = int(out["num_detections"])
  setup["served"][video_id] = dict(
      segments=out["detection_segments"][:n], scores=out["detection_scores"][:n],
      labels=[NAMES[int(c)] for c in out["detection_classes"][:n]], frames=frames)
  return setup["served"][video_id]


def test_cli_equals_served_signature_and_names_incomplete_videos(setup, tmp_path):
  with open(os.path.join(setup["export_dir"], exporter_lib.MODEL_INFO_NAME)) as f:
    inputs = json.load(f)["inputs"]
  assert inputs["frame_lengths"] == "num_frames" and inputs["lengths"] == "num_steps"
  # The CLI decodes at the frame rate the export recorded (no --frame_rate given).
  assert inputs["streams"]["frames"]["fps"] == FRAME_FPS
  compared = 0
  for batch_size in (1, 2):  # 2: both videos in one call, frames and features padded.
    output = str(tmp_path / f"results_{batch_size}.json")
    result = infer_main.run(_cli_flags(setup, output, f"--batch_size={batch_size}"))
    assert sorted(result.detections) == ["v1", "v2"]
    assert sorted(result.skipped) == ["nofile", "orphan"]
    assert "nofile" in result.skipped["nofile"] and "no video file" in result.skipped["nofile"]
    assert "orphan.mp4" in result.skipped["orphan"]
    assert "no features" in result.skipped["orphan"]
    got = eval_io.load_results(output)
    for video_id in ("v1", "v2"):
      want = _served(setup, video_id)
      # The frame count follows the video length at the model's frame rate.
      assert want["frames"].shape[1] == int(VIDEOS[video_id] * FRAME_FPS)
      order = np.argsort(-np.asarray(got[video_id]["scores"]), kind="stable")
      assert len(order) == len(want["scores"]), video_id
      np.testing.assert_allclose(np.asarray(got[video_id]["scores"])[order], want["scores"],
                                 rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(np.asarray(got[video_id]["segments"])[order],
                                 want["segments"], atol=1e-4)
      assert [got[video_id]["labels"][i] for i in order] == want["labels"]
      compared += len(order)
  assert compared > 0, "no detections: the comparison above was empty"


def test_checkpoint_cli_equals_served_signature(setup, tmp_path):
  """--pipeline_config + --checkpoint (CheckpointDetector) feeds the frames the same way."""
  output = str(tmp_path / "results.json")
  result = infer_main.run(_flags(
      f"--pipeline_config={setup['config_path']}", f"--checkpoint={setup['root']}/train",
      f"--features=rgb:{setup['rgb']}", f"--feature_fps={FEATURE_FPS}",
      f"--video={setup['videos']}", "--video_ids=v1", f"--output={output}"))
  assert sorted(result.detections) == ["v1"]
  got, want = eval_io.load_results(output)["v1"], _served(setup, "v1")
  order = np.argsort(-np.asarray(got["scores"]), kind="stable")
  assert len(order) == len(want["scores"]) > 0
  np.testing.assert_allclose(np.asarray(got["scores"])[order], want["scores"], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["segments"])[order], want["segments"], atol=1e-4)


def test_frames_would_change_the_detections(setup):
  """The frames reach the model: other frames give other detections (else the comparison
  above could not see a frames-decoding mistake)."""
  want = _served(setup, "v1")
  fn = setup["serving"].signatures[exporter_lib.SERVING_SIGNATURE]
  rgb = np.load(os.path.join(setup["rgb"], "v1.npy"))[np.newaxis]
  frames = 255 - want["frames"]
  out = fn(rgb=tf.constant(rgb), num_steps=tf.constant([rgb.shape[1]], tf.int32),
           feature_fps=tf.constant([FEATURE_FPS]), frames=tf.constant(frames),
           num_frames=tf.constant([frames.shape[1]], tf.int32), fps=tf.constant([FRAME_FPS]))
  n = int(out["num_detections"][0])
  other = out["detection_scores"].numpy()[0, :n]
  assert n != len(want["scores"]) or not np.allclose(other, want["scores"], atol=1e-5)


@pytest.mark.parametrize("args, message", [
    ((), r"give one of --features, --hdf5_features or --tfrecords and --video"),
    (("--video=X",), r"give one of --features.*and --video"),
])
def test_a_missing_part_is_a_usage_error(setup, loaded_once, tmp_path, args, message):
  output = str(tmp_path / "r.json")
  if args:  # Only --video: no feature source.
    fv = _flags(f"--saved_model_dir={setup['export_dir']}", f"--video={setup['videos']}",
                f"--output={output}")
  else:     # Only features: no --video.
    fv = _flags(f"--saved_model_dir={setup['export_dir']}", f"--features=rgb:{setup['rgb']}",
                f"--feature_fps={FEATURE_FPS}", f"--output={output}")
  with pytest.raises(app.UsageError, match=message):
    infer_main.run(fv)


class _Spy:
  """The fixture's detector, recording every call's inputs."""

  def __init__(self, detector):
    self._detector = detector
    self.stream_dims, self.side_stream = detector.stream_dims, detector.side_stream
    self.max_detections, self.model_info = detector.max_detections, detector.model_info
    self.calls = []

  def __call__(self, features, num_steps, feature_fps, side=None):
    self.calls.append((features, num_steps, feature_fps, side))
    return self._detector(features, num_steps, feature_fps, side)


def test_windows_get_the_frames_of_their_time_span(setup):
  """Long videos run in windows: each window's call carries the features of its steps and the
  frames of its time span (4 frames per step here: steps [s, s + 4) -> frames [4 s ... ),
  worked by hand below); the merged detections equal the signature run on those slices."""
  spy = _Spy(setup["detector"])
  features = video_source.feature_readers.open_source(
      {"rgb": 4}, features=f"rgb:{setup['rgb']}", feature_fps=FEATURE_FPS, video_ids=["v1"])
  source = video_source.MixedVideoSource(features, setup["videos"], spy.stream_dims,
                                         fps=FRAME_FPS, video_ids=["v1"])
  result = inference_lib.run_inference(spy, source, window_steps=4, window_overlap=0.5,
                                       nms_iou_threshold=0.5)
  assert result.stats["windows"] == 5 and not result.skipped
  rgb = np.load(os.path.join(setup["rgb"], "v1.npy"))            # 12 steps
  frames = _served(setup, "v1")["frames"][0]                     # 24 frames, 2 per step
  # Hand-worked: stride 2 -> starts 0, 2, 4, 6, 8; frames [2 s, 2 (s + 4) + 1), <= 24.
  expected = [(0, 0, 9), (2, 4, 13), (4, 8, 17), (6, 12, 21), (8, 16, 24)]
  assert len(spy.calls) == len(expected)
  fn = setup["serving"].signatures[exporter_lib.SERVING_SIGNATURE]
  parts = []
  for (start, a, b), (feats, num_steps, fps, side) in zip(expected, spy.calls):
    np.testing.assert_array_equal(feats["rgb"][0, :4], rgb[start:start + 4])
    assert list(num_steps) == [4] and list(fps) == [FEATURE_FPS]
    side_frames, num_frames, frame_fps = side
    assert list(num_frames) == [b - a] and list(frame_fps) == [FRAME_FPS]
    np.testing.assert_array_equal(side_frames[0, :b - a], frames[a:b])
    out = fn(rgb=tf.constant(rgb[np.newaxis, start:start + 4]),
             num_steps=tf.constant([4], tf.int32), feature_fps=tf.constant([FEATURE_FPS]),
             frames=tf.constant(frames[np.newaxis, a:b]),
             num_frames=tf.constant([b - a], tf.int32), fps=tf.constant([FRAME_FPS]))
    n = int(out["num_detections"][0])
    parts.append((out["detection_segments"].numpy()[0, :n] + start / FEATURE_FPS,
                  out["detection_scores"].numpy()[0, :n],
                  out["detection_classes"].numpy()[0, :n]))
  want = windowing.merge_detections(*(np.concatenate(x) for x in zip(*parts)), 0.5,
                                    spy.max_detections)
  got = result.detections["v1"]
  assert len(got["scores"]) == len(want[1]) > 0
  np.testing.assert_allclose(got["scores"], want[1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["segments"], want[0], atol=1e-4)
  np.testing.assert_array_equal(got["classes"], want[2])


def test_cli_runs_long_videos_in_windows(setup, loaded_once, tmp_path):
  output = str(tmp_path / "r.json")
  result = infer_main.run(_cli_flags(setup, output, "--window_steps=4", "--batch_size=3"))
  assert sorted(result.detections) == ["v1", "v2"]
  # Overlap 0.25 -> stride 3; v1: 12 steps, starts 0, 3, 6, 8 (end-aligned); v2: 9 steps,
  # starts 0, 3, 5.
  assert result.stats["windows"] == 4 + 3
  assert sorted(eval_io.load_results(output)) == ["v1", "v2"]


def test_serving_client_equals_the_cli_in_windows(setup, loaded_once, tmp_path):
  """export/serving_client.py against a gRPC stand-in for TF Serving running the export:
  features plus --video, long videos in windows each with the frames of its time span; the
  frame rate from the model_info.json beside --label_map. Its results JSON equals infer_main's
  on the same export and inputs."""
  from tests.export import cli_loader  # pylint: disable=g-import-not-at-top
  client = cli_loader.load_serving_client()
  served = serving_stand_ins.load_served(setup["export_dir"], loaded=setup["serving"])
  windows = ("--window_steps=4", "--window_overlap=0.25", "--nms_iou_threshold=0.5",
             "--batch_size=3")
  offline = str(tmp_path / "offline.json")
  infer_main.run(_cli_flags(setup, offline, *windows))
  with serving_stand_ins.grpc_server(served) as (address, service):
    output = str(tmp_path / "served.json")
    result = client.run(cli_util.parse_flags(
        client, f"--server={address}", f"--features=rgb:{setup['rgb']}",
        f"--feature_fps={FEATURE_FPS}", f"--video={setup['videos']}",
        f"--label_map={setup['export_dir']}/label_map.pbtxt", f"--output={output}", *windows))
  assert sorted(result.detections) == ["v1", "v2"]
  assert sorted(result.skipped) == ["nofile", "orphan"]
  assert result.stats["windows"] == 4 + 3  # As test_cli_runs_long_videos_in_windows.
  first = service.requests[0].inputs
  # The first batch: v1's windows at steps 0, 3, 6 (4 steps each); 2 frames per step, so
  # frames [2 s, 2 (s + 4) + 1): 9 frames each.
  assert sorted(first) == ["feature_fps", "fps", "frames", "num_frames", "num_steps", "rgb"]
  assert first["frames"].dtype == tf.uint8.as_datatype_enum
  assert tf.make_ndarray(first["num_frames"]).tolist() == [9, 9, 9]
  assert tf.make_ndarray(first["fps"]).tolist() == [FRAME_FPS] * 3
  with open(output) as a, open(offline) as b:
    got, want = json.load(a), json.load(b)
  assert got == want
  assert sum(len(v) for v in got["results"].values()) > 0


def test_serving_client_without_video_is_a_usage_error(setup, tmp_path):
  from tests.export import cli_loader  # pylint: disable=g-import-not-at-top
  client = cli_loader.load_serving_client()
  served = serving_stand_ins.load_served(setup["export_dir"], loaded=setup["serving"])
  with serving_stand_ins.grpc_server(served) as (address, service):
    fv = cli_util.parse_flags(client, f"--server={address}", f"--features=rgb:{setup['rgb']}",
                              f"--feature_fps={FEATURE_FPS}", f"--output={tmp_path / 'r.json'}")
    with pytest.raises(app.UsageError, match=r"^this model reads feature streams and the "
                                             r"frames stream 'frames': give one of --features, "
                                             r"--hdf5_features or --tfrecords and --video$"):
      client.run(fv)
  assert not service.requests
