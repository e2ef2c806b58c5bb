"""Inference CLI: SavedModel or checkpoint + npy / HDF5 / TFRecord features -> results JSON,
windowed long videos, bad videos, and bounded reads."""
import json
import os

from absl import app
import h5py
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.data import sequence_example
from tal_tf.evaluation import io as eval_io
from tal_tf.dataset_tools import feature_readers
from tal_tf.inference import infer_main
from tal_tf.inference import inference_lib
from tal_tf.inference import windowing
from tests import cli_util
from tests.export import tiny_model

NAMES = {1: "Jump", 2: "Run", 3: "Throw"}
LENGTHS = {"video_a": 40, "video_b": 23}
FPS = 2.0


def _flags(*args):
  return cli_util.parse_flags(infer_main, *args)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
  """The same videos as .npy dirs, one concatenated HDF5 file and TFRecords."""
  root = str(tmp_path_factory.mktemp("features"))
  videos = {v: tiny_model.random_features(t, seed=i) for i, (v, t) in enumerate(LENGTHS.items())}
  dirs = {s: os.path.join(root, s) for s in tiny_model.STREAM_DIMS}
  for d in dirs.values():
    os.makedirs(d)
  for video_id, values in videos.items():
    for s, array in values.items():
      np.save(os.path.join(dirs[s], video_id + ".npy"), array)
  h5_path = os.path.join(root, "features.h5")
  with h5py.File(h5_path, "w") as f:
    for video_id, values in videos.items():
      # Model stream order: rgb then flow.
      f.create_dataset(video_id, data=np.concatenate([values["rgb"], values["flow"]], axis=1))
  record_path = os.path.join(root, "videos.tfrecord")
  with tf.io.TFRecordWriter(record_path) as writer:
    for video_id, values in videos.items():
      t = values["rgb"].shape[0]
      writer.write(sequence_example.make_sequence_example(
          video_id, t / FPS, FPS, values, np.zeros((0, 2)), [], []).SerializeToString())
  return dict(root=root, videos=videos, npy=",".join(f"{s}:{d}" for s, d in dirs.items()),
              dirs=dirs, h5=h5_path, tfrecord=record_path)


_LOADED = {}


def _saved_model_outputs(exported, arrays, num_steps, fps):
  if exported["export_dir"] not in _LOADED:
    _LOADED[exported["export_dir"]] = tf.saved_model.load(exported["export_dir"])
  fn = _LOADED[exported["export_dir"]].signatures["serving_default"]
  out = fn(**{s: tf.constant(arrays[s]) for s in tiny_model.STREAM_DIMS},
           num_steps=tf.constant(num_steps, tf.int32), feature_fps=tf.constant(fps, tf.float32))
  return {k: v.numpy() for k, v in out.items()}


def _expected_whole_videos(exported, videos):
  expected = {}
  for video_id, values in videos.items():
    t = values["rgb"].shape[0]
    out = _saved_model_outputs(exported, {s: v[None] for s, v in values.items()}, [t], [FPS])
    n = int(out["num_detections"][0])
    expected[video_id] = dict(segments=out["detection_segments"][0, :n],
                              scores=out["detection_scores"][0, :n],
                              labels=[NAMES[int(c)] for c in out["detection_classes"][0, :n]])
  return expected


def _assert_results(path, expected):
  got = eval_io.load_results(path)
  assert sorted(got) == sorted(expected)
  for video_id, exp in expected.items():
    assert len(got[video_id]["scores"]) == len(exp["scores"]) > 0, video_id
    np.testing.assert_allclose(got[video_id]["segments"], exp["segments"], atol=1e-5)
    np.testing.assert_allclose(got[video_id]["scores"], exp["scores"], atol=1e-6)
    assert list(got[video_id]["labels"]) == list(exp["labels"]), video_id


def test_saved_model_on_npy_dirs_writes_activitynet_results(exported, features, tmp_path):
  output = str(tmp_path / "results.json")
  proposals = str(tmp_path / "proposals.json")
  base_dir = os.path.dirname(exported["export_dir"])  # TF Serving base path: newest version.
  result = infer_main.run(_flags(f"--saved_model_dir={base_dir}", f"--features={features['npy']}",
                                 f"--feature_fps={FPS}", f"--output={output}",
                                 f"--proposals_output={proposals}", "--batch_size=2"))
  assert result.stats["batches"] == 1 and not result.skipped
  _assert_results(output, _expected_whole_videos(exported, features["videos"]))
  with open(output) as f:
    first = json.load(f)["results"]["video_a"][0]
  assert set(first) == {"segment", "label", "score"}
  props = eval_io.load_results(proposals, require_labels=False)
  assert sorted(props) == sorted(LENGTHS)
  assert all(len(p["scores"]) > 0 for p in props.values())


def test_annotations_subset_selects_videos(exported, features, tmp_path):
  annotations = tmp_path / "gt.json"
  annotations.write_text(json.dumps({"database": {
      "video_a": {"subset": "Validation", "duration": 20.0, "annotations": []},
      "video_b": {"subset": "Test", "duration": 11.5, "annotations": []}}}))
  output = str(tmp_path / "results.json")
  result = infer_main.run(_flags(
      f"--saved_model_dir={exported['export_dir']}", f"--features={features['npy']}",
      f"--feature_fps={FPS}", f"--annotations={annotations}", "--subset=test",
      f"--output={output}"))
  assert sorted(result.detections) == ["video_b"]
  with pytest.raises(app.UsageError, match="go together"):
    infer_main.run(_flags(
        f"--saved_model_dir={exported['export_dir']}", f"--features={features['npy']}",
        f"--feature_fps={FPS}", "--subset=test", f"--output={output}"))
  with pytest.raises(eval_io.EvaluationFormatError, match=r"subset \['training'\] not found"):
    infer_main.run(_flags(
        f"--saved_model_dir={exported['export_dir']}", f"--features={features['npy']}",
        f"--feature_fps={FPS}", f"--annotations={annotations}", "--subset=training",
        f"--output={output}"))


def test_checkpoint_with_hdf5_and_tfrecords_agree_with_the_saved_model(exported, features,
                                                                       tmp_path):
  expected = _expected_whole_videos(exported, features["videos"])
  h5_out = str(tmp_path / "h5.json")
  infer_main.run(_flags(f"--pipeline_config={exported['config_path']}",
                        f"--checkpoint={exported['checkpoint']}",
                        f"--hdf5_features={features['h5']}", f"--feature_fps={FPS}",
                        f"--output={h5_out}"))
  _assert_results(h5_out, expected)
  rec_out = str(tmp_path / "rec.json")
  infer_main.run(_flags(f"--saved_model_dir={exported['export_dir']}",
                        f"--tfrecords={features['tfrecord']}", f"--output={rec_out}"))
  _assert_results(rec_out, expected)


def _reference_class_nms(segments, scores, classes, threshold, limit):
  """Loop-based per-class greedy NMS then top-`limit` by score (independent of windowing)."""
  keep = []
  for cls in sorted(set(classes.tolist())):
    idx = sorted(np.flatnonzero(classes == cls), key=lambda i: (-scores[i], i))
    kept = []
    for i in idx:
      ok = True
      for j in kept:
        inter = max(0.0, min(segments[i, 1], segments[j, 1]) - max(segments[i, 0], segments[j, 0]))
        union = segments[i, 1] - segments[i, 0] + segments[j, 1] - segments[j, 0] - inter
        if inter / union > threshold:
          ok = False
          break
      if ok:
        kept.append(i)
    keep.extend(kept)
  keep = sorted(keep, key=lambda i: -scores[i])[:limit]
  return segments[keep], scores[keep], classes[keep]


def test_long_video_is_windowed_and_merged(exported, tmp_path):
  values = tiny_model.random_features(90, seed=42)
  dirs = {}
  for s, array in values.items():
    dirs[s] = str(tmp_path / s)
    os.makedirs(dirs[s])
    np.save(os.path.join(dirs[s], "long.npy"), array)
  output = str(tmp_path / "long.json")
  result = infer_main.run(_flags(
      f"--saved_model_dir={exported['export_dir']}",
      "--features=" + ",".join(f"{s}:{d}" for s, d in dirs.items()), "--feature_fps=0.5",
      f"--output={output}", "--window_steps=32", "--window_overlap=0.25", "--batch_size=3"))
  assert result.stats["windows"] == 4  # starts 0, 24, 48 and end-aligned 58
  pooled = []
  for start in (0, 24, 48, 58):
    window = {s: v[None, start:start + 32] for s, v in values.items()}
    out = _saved_model_outputs(exported, window, [32], [0.5])
    n = int(out["num_detections"][0])
    pooled.append((out["detection_segments"][0, :n] + start / 0.5,
                   out["detection_scores"][0, :n], out["detection_classes"][0, :n]))
  segments, scores, classes = (np.concatenate(x) for x in zip(*pooled))
  # The config's second-stage NMS tIoU (0.5) merges windows; N = 15 detections.
  segs, sc, cl = _reference_class_nms(segments.astype(np.float64), scores.astype(np.float64),
                                      classes, 0.5, tiny_model.MAX_DETECTIONS)
  got = eval_io.load_results(output)["long"]
  np.testing.assert_allclose(got["scores"], sc, atol=1e-6)
  np.testing.assert_allclose(got["segments"], segs, atol=1e-4)
  assert list(got["labels"]) == [NAMES[int(c)] for c in cl]
  assert got["segments"].max() <= 90 / 0.5 + 1e-3


def test_bad_videos_are_skipped_and_empty_videos_give_empty_results(exported, features,
                                                                     tmp_path):
  dirs = {s: str(tmp_path / s) for s in tiny_model.STREAM_DIMS}
  for s, d in dirs.items():
    os.makedirs(d)
    good = features["videos"]["video_b"][s]
    np.save(os.path.join(d, "good.npy"), good)
    bad = good.copy()
    bad[7, 1] = np.nan
    np.save(os.path.join(d, "has_nan.npy"), bad if s == "flow" else good)
    np.save(os.path.join(d, "empty.npy"), np.zeros((0, tiny_model.STREAM_DIMS[s]), np.float32))
    np.save(os.path.join(d, "wrong_dim.npy"), good[:, :3] if s == "rgb" else good)
    np.save(os.path.join(d, "truncated.npy"), good)
    if s == "rgb":
      with open(os.path.join(d, "truncated.npy"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(d, "truncated.npy")) - 10)
  output = str(tmp_path / "out.json")
  result = infer_main.run(_flags(f"--saved_model_dir={exported['export_dir']}",
                                 "--features=" + ",".join(f"{s}:{d}" for s, d in dirs.items()),
                                 f"--feature_fps={FPS}", f"--output={output}"))
  assert sorted(result.skipped) == ["has_nan", "truncated", "wrong_dim"]
  assert "truncated" in result.skipped["truncated"]
  assert "stream 'flow'" in result.skipped["has_nan"] and "steps [7]" in result.skipped["has_nan"]
  assert "expected [T, 12]" in result.skipped["wrong_dim"]
  got = eval_io.load_results(output)
  assert sorted(got) == ["empty", "good"]
  assert len(got["empty"]["scores"]) == 0 and len(got["good"]["scores"]) > 0


def test_usage_errors_are_clear(exported, features, tmp_path):
  with pytest.raises(app.UsageError, match="exactly one of --saved_model_dir"):
    infer_main.run(_flags(f"--saved_model_dir={exported['export_dir']}",
                          f"--pipeline_config={exported['config_path']}",
                          f"--features={features['npy']}", "--output=x.json"))
  with pytest.raises(ValueError, match="holds no saved_model.pb"):
    inference_lib.resolve_saved_model_dir(str(tmp_path))
  with pytest.raises(ValueError, match="must be the streams .* of the model"):
    feature_readers.NpyDirSource({"rgb": features["dirs"]["rgb"]}, tiny_model.STREAM_DIMS, 1.0)
  with pytest.raises(ValueError, match="needs --feature_fps > 0"):
    iter(feature_readers.NpyDirSource(features["dirs"], tiny_model.STREAM_DIMS, None))
  with pytest.raises(app.UsageError, match="--hdf5_features needs --feature_fps > 0"):
    infer_main.run(_flags(f"--saved_model_dir={exported['export_dir']}",
                          f"--hdf5_features={features['h5']}", "--output=x.json"))


# ----------------------------------------------------------------------------- bounded reads
class _RecordingVideo(feature_readers.Video):
  """A synthetic long video that records every read."""

  def __init__(self, video_id, num_steps, fps, log):
    def read(a, b):
      log.append(b - a)
      steps = np.arange(a, b, dtype=np.float32)[:, None]
      return {"x": np.repeat(steps, 4, axis=1)}
    super().__init__(video_id, num_steps, fps, read, video_id)


class _FakeDetector:
  """One detection per window: class 1 at window steps [2, 6), score = 1 / (1 + start)."""
  stream_dims = {"x": 4}
  max_detections = 3

  def __init__(self):
    self.calls = []

  def __call__(self, features, num_steps, feature_fps):
    x = features["x"]
    self.calls.append(x.shape)
    b = x.shape[0]
    first_step = x[:, 0, 0]  # Window start (the features are the step indices).
    segs = np.zeros((b, 3, 2), np.float32)
    segs[:, 0] = np.stack([2.0 / feature_fps, 6.0 / feature_fps], axis=-1)
    scores = np.zeros((b, 3), np.float32)
    scores[:, 0] = 1.0 / (1.0 + first_step)
    classes = np.zeros((b, 3), np.int32)
    classes[:, 0] = 1
    return {"detection_segments": segs, "detection_scores": scores,
            "detection_classes": classes, "num_detections": np.ones(b, np.int32),
            "proposal_segments": segs, "proposal_scores": scores,
            "num_proposals": np.ones(b, np.int32)}


def test_long_video_reads_one_batch_of_windows_at_a_time():
  log = []
  hours = 4 * 3600 * 0.625  # 9000 steps at 0.625 steps/s
  video = _RecordingVideo("four_hours", int(hours), 0.625, log)
  detector = _FakeDetector()
  result = inference_lib.run_inference(detector, [("four_hours", video)], window_steps=128,
                                       window_overlap=0.25, batch_size=4,
                                       nms_iou_threshold=0.5)
  plan = windowing.plan_windows(9000, 128, 0.25)
  assert max(log) == 128 and len(log) == len(plan)
  assert all(shape[0] <= 4 and shape[1] == 128 for shape in detector.calls)
  det = result.detections["four_hours"]
  # Every window's detection is disjoint from the others' -> all survive NMS; the top 3 are
  # the earliest windows (score 1 / (1 + start)), shifted to whole-video seconds.
  starts = [s for s, _ in plan][:3]
  np.testing.assert_allclose(det["scores"], [1.0 / (1 + s) for s in starts])
  np.testing.assert_allclose(det["segments"],
                             [[(s + 2) / 0.625, (s + 6) / 0.625] for s in starts])
