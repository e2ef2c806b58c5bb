"""The converter: every feature-flag path, every data quirk, the round trip and the CLI."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import app

from tal_tf.data import label_map_util
from tal_tf.data import sequence_example
from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import feature_readers
from tests import cli_util

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D_RGB, D_FLOW, FPS = 6, 4, 2.0


def _features(rng, steps, d_rgb=D_RGB, d_flow=D_FLOW):
  return {"rgb": rng.normal(size=(steps, d_rgb)).astype(np.float32),
          "flow": rng.normal(size=(steps, d_flow)).astype(np.float32)}


def _entry(subset, duration, annotations, fps=30.0):
  entry = {"subset": subset, "annotations": annotations}
  if duration is not None:
    entry["duration"] = duration
  if fps is not None:
    entry["fps"] = fps
  return entry


def _ann(label, start, end):
  return {"segment": [start, end], "label": label}


class PickleBomb:
  """Unpickling this would create a marker file: used to prove .npy is never unpickled."""

  marker = None

  def __reduce__(self):
    return (open, (PickleBomb.marker, "w"))


def _build_quirky(directory):
  """Annotations + per-stream .npy dirs exercising every quirk; returns paths and truth."""
  rng = np.random.default_rng(0)
  db, feats = {}, {}
  db["vid_ok"] = _entry("Validation", 10.0, [
      _ann("Alpha", 1.0, 3.0), _ann("Beta", 2.5, 4.0),
      _ann("Alpha", 9.0, 12.0),            # clipped to [9, 10]
      _ann("Beta", -1.0, 0.5),             # clipped to [0, 0.5]
      _ann("Beta", 11.0, 13.0),            # outside the video
      _ann("Alpha", 5.0, 5.0),             # zero length
      _ann("Beta", 6.0, 4.0),              # inverted
      _ann("Ambiguous", 2.0, 3.0),         # ignored class
      {"segment": "oops", "label": "Alpha"},  # malformed
      {"segment": [1.0, 2.0]},             # no label
  ])
  feats["vid_ok"] = _features(rng, 20)
  for vid in ("vid_missing", "vid_empty", "vid_wrongdim", "vid_nan", "vid_inf", "vid_pickle",
              "vid_garbage", "vid_1d", "vid_trim", "vid_mismatch", "vid_len", "vid_nodur",
              "vid_noseg", "vid_nofps"):
    db[vid] = _entry("Validation", 10.0, [_ann("Beta", 1.0, 2.0)])
    feats[vid] = _features(rng, 20)
  db["vid_noseg"]["annotations"] = []
  del db["vid_nodur"]["duration"]
  db["vid_nofps"]["fps"] = None
  db["vid_test"] = _entry("Test", 5.0, [_ann("Gamma", 0.5, 1.5)])
  feats["vid_test"] = _features(rng, 10)
  feats["vid_empty"]["rgb"] = np.zeros((0, D_RGB), np.float32)
  feats["vid_wrongdim"]["rgb"] = np.ones((20, D_RGB + 1), np.float32)
  feats["vid_nan"]["flow"][3, 1] = np.nan
  feats["vid_inf"]["rgb"][0, 0] = np.inf
  feats["vid_1d"]["flow"] = np.ones(20, np.float32)
  feats["vid_trim"]["flow"] = feats["vid_trim"]["flow"][:19]
  feats["vid_mismatch"]["flow"] = feats["vid_mismatch"]["flow"][:10]
  feats["vid_len"] = _features(rng, 40)

  dirs = {s: os.path.join(directory, "features", s) for s in ("rgb", "flow")}
  for d in dirs.values():
    os.makedirs(d)
  PickleBomb.marker = os.path.join(directory, "PWNED")
  for vid, streams in feats.items():
    for stream, values in streams.items():
      path = os.path.join(dirs[stream], vid + ".npy")
      if vid == "vid_missing" and stream == "flow":
        continue
      if vid == "vid_pickle" and stream == "rgb":
        np.save(path, np.array([PickleBomb()], dtype=object), allow_pickle=True)
      elif vid == "vid_garbage" and stream == "rgb":
        with open(path, "wb") as f:
          f.write(b"\x93NUMPY garbage that is not an array header")
      else:
        np.save(path, values)
  ann_path = os.path.join(directory, "annotations.json")
  with open(ann_path, "w") as f:
    json.dump({"version": "test", "database": db}, f)
  return {"annotations": ann_path, "dirs": dirs, "features": feats, "database": db}


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
  return _build_quirky(str(tmp_path_factory.mktemp("quirky")))


def _read_records(paths):
  out = {}
  for path in paths:
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      decoded = sequence_example.decode_sequence_example_numpy(raw)
      out[decoded["video_id"]] = decoded
  return out


def _run_flags(argv):
  """Parses converter flags in-process (fresh FlagValues) and converts; -> summary."""
  fv = cli_util.parse_flags(create_tfrecord, *argv)
  source = create_tfrecord.feature_source_from_flags(fv)
  return create_tfrecord.convert_dataset(
      annotations_path=fv.annotations, output_prefix=fv.output, label_map_path=fv.label_map,
      feature_source=source, subset=fv.subset or None, num_shards=fv.num_shards,
      feature_fps=fv.feature_fps, frames_per_step=fv.frames_per_step,
      ignore_classes=fv.ignore_classes, length_tolerance=fv.length_tolerance,
      summary_json=fv.summary_json, progress_stream=None, trimmed=fv.trimmed)


SKIPPED = {
    "vid_missing": "features_missing", "vid_empty": "features_empty",
    "vid_wrongdim": "features_wrong_dim", "vid_1d": "features_wrong_dim",
    "vid_nan": "features_non_finite", "vid_inf": "features_non_finite",
    "vid_pickle": "features_malformed", "vid_garbage": "features_malformed",
    "vid_mismatch": "stream_length_mismatch",
}


def test_npy_dirs_every_quirk_counted_and_round_trip(quirky, tmp_path):
  out = os.path.join(str(tmp_path), "rec", "val")
  label_map = os.path.join(str(tmp_path), "label_map.pbtxt")
  summary = _run_flags([
      f"--annotations={quirky['annotations']}", "--subset=validation",
      f"--features=rgb:{quirky['dirs']['rgb']},flow:{quirky['dirs']['flow']}",
      f"--feature_fps={FPS}", f"--label_map={label_map}", f"--output={out}",
      "--num_shards=2", "--ignore_classes=Ambiguous"])
  assert not os.path.exists(PickleBomb.marker)  # the pickle payload never ran
  # Label map written from all subsets' classes, sorted, ids from 1, Ambiguous ignored.
  assert label_map_util.get_label_map_dict(label_map) == {"Alpha": 1, "Beta": 2, "Gamma": 3}
  assert summary.label_map_written
  counts = dict(summary.report.counts)
  assert counts == {
      "segment_clipped": 2, "segment_outside_video": 1, "segment_degenerate": 2,
      "segment_ignored_class": 1, "segment_malformed": 2, "video_without_segments": 1,
      "duration_missing": 1, "features_missing": 1, "features_empty": 1,
      "features_wrong_dim": 2, "features_non_finite": 2, "features_malformed": 2,
      "stream_length_trimmed": 1, "stream_length_mismatch": 1, "length_inconsistent": 1}
  skipped = summary.report.skipped_videos()
  assert {v: r.split(":")[0] for v, r in skipped.items()} == SKIPPED
  assert summary.stream_dims == {"rgb": D_RGB, "flow": D_FLOW}  # inferred from headers
  assert summary.num_selected == 15 and summary.num_written == 15 - len(SKIPPED)
  with open(summary.summary_json) as f:
    on_disk = json.load(f)
  assert on_disk["num_skipped"] == len(SKIPPED)
  assert set(on_disk["skipped_videos"]) == set(SKIPPED)
  text = summary.format()
  for vid in SKIPPED:
    assert vid in text  # skipped videos are all listed

  records = _read_records(summary.shards)
  assert len(summary.shards) == 2
  expected_ids = sorted(set(quirky["database"]) - set(SKIPPED) - {"vid_test"})
  assert sorted(records) == expected_ids
  ok = records["vid_ok"]
  np.testing.assert_array_equal(ok["features"]["rgb"], quirky["features"]["vid_ok"]["rgb"])
  np.testing.assert_array_equal(ok["features"]["flow"], quirky["features"]["vid_ok"]["flow"])
  np.testing.assert_array_equal(ok["segments_seconds"],
                                [[1.0, 3.0], [2.5, 4.0], [9.0, 10.0], [0.0, 0.5]])
  np.testing.assert_array_equal(ok["labels"], [1, 2, 1, 2])
  assert ok["label_texts"] == ["Alpha", "Beta", "Alpha", "Beta"]
  np.testing.assert_array_equal(ok["video_labels"], [1, 2])
  assert ok["duration"] == 10.0 and ok["feature_fps"] == FPS and ok["num_steps"] == 20
  trimmed = records["vid_trim"]
  assert trimmed["num_steps"] == 19
  np.testing.assert_array_equal(trimmed["features"]["rgb"],
                                quirky["features"]["vid_trim"]["rgb"][:19])
  assert records["vid_nodur"]["duration"] == pytest.approx(20 / FPS)
  assert records["vid_noseg"]["segments_seconds"].shape == (0, 2)
  assert records["vid_len"]["num_steps"] == 40  # reported, kept


def test_frames_per_step_uses_json_fps_and_skips_videos_without_it(quirky, tmp_path):
  summary = _run_flags([
      f"--annotations={quirky['annotations']}", "--subset=VALIDATION",
      f"--features=rgb:{quirky['dirs']['rgb']},flow:{quirky['dirs']['flow']}",
      "--frames_per_step=15", "--stream_dims=rgb:6,flow:4",
      f"--label_map={os.path.join(str(tmp_path), 'lm.pbtxt')}",
      f"--output={os.path.join(str(tmp_path), 'fps')}", "--ignore_classes=Ambiguous"])
  assert summary.report.counts["fps_missing"] == 1
  assert "vid_nofps" in summary.report.skipped_videos()
  records = _read_records(summary.shards)
  assert records["vid_ok"]["feature_fps"] == pytest.approx(30.0 / 15)


def _clean_dataset(directory, num_videos=4, seed=1):
  rng = np.random.default_rng(seed)
  db, feats = {}, {}
  for i in range(num_videos):
    steps = int(rng.integers(6, 15))
    vid = f"video_{i}"
    db[vid] = _entry("validation", steps / FPS, [_ann("Alpha" if i % 2 else "Beta", 0.5,
                                                      steps / FPS - 0.5)])
    feats[vid] = _features(rng, steps)
  path = os.path.join(directory, "ann.json")
  with open(path, "w") as f:
    json.dump({"database": db}, f)
  return path, feats


def _assert_round_trip(summary, feats):
  records = _read_records(summary.shards)
  assert sorted(records) == sorted(feats)
  for vid, streams in feats.items():
    for stream, values in streams.items():
      np.testing.assert_array_equal(records[vid]["features"][stream], values)


def test_concat_features_split_by_dims(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path))
  concat = os.path.join(str(tmp_path), "concat")
  os.makedirs(concat)
  for vid, s in feats.items():
    np.save(os.path.join(concat, vid + ".npy"), np.concatenate([s["rgb"], s["flow"]], 1))
  np.save(os.path.join(concat, "video_1.npy"), np.ones((8, D_RGB), np.float32))  # bad dim
  summary = _run_flags([
      f"--annotations={ann}", f"--concat_features={concat}",
      f"--stream_dims=rgb:{D_RGB},flow:{D_FLOW}", f"--feature_fps={FPS}",
      f"--label_map={os.path.join(str(tmp_path), 'lm.pbtxt')}",
      f"--output={os.path.join(str(tmp_path), 'out')}", "--num_shards=3"])
  assert summary.report.skipped_videos().keys() == {"video_1"}
  del feats["video_1"]
  _assert_round_trip(summary, feats)
  assert len(summary.shards) == 3


@pytest.mark.parametrize("per_stream", [False, True])
def test_hdf5_features_through_h5py(tmp_path, per_stream):
  import h5py
  ann, feats = _clean_dataset(str(tmp_path))
  directory = str(tmp_path)
  if per_stream:
    for stream in ("rgb", "flow"):
      with h5py.File(os.path.join(directory, f"{stream}.h5"), "w") as f:
        for vid, s in feats.items():
          if not (vid == "video_2" and stream == "flow"):
            f.create_dataset(vid, data=s[stream])
    spec = f"rgb:{directory}/rgb.h5,flow:{directory}/flow.h5"
  else:
    with h5py.File(os.path.join(directory, "all.h5"), "w") as f:
      for vid, s in feats.items():
        data = np.concatenate([s["rgb"], s["flow"]], 1).astype(np.float64)
        if vid == "video_2":
          data[0, 0] = np.nan
        f.create_dataset(vid, data=data)
    spec = os.path.join(directory, "all.h5")
  summary = _run_flags([
      f"--annotations={ann}", f"--hdf5_features={spec}",
      f"--stream_dims=rgb:{D_RGB},flow:{D_FLOW}", f"--feature_fps={FPS}",
      f"--label_map={os.path.join(directory, 'lm.pbtxt')}",
      f"--output={os.path.join(directory, 'out')}"])
  expected_kind = "features_missing" if per_stream else "features_non_finite"
  assert summary.report.counts == {expected_kind: 1}
  del feats["video_2"]
  _assert_round_trip(summary, feats)


def test_malformed_hdf5_is_reported_not_crashing(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path), num_videos=2)
  bad = os.path.join(str(tmp_path), "bad.h5")
  with open(bad, "wb") as f:
    f.write(b"this is not an HDF5 file" * 50)  # reported as malformed, never a crash
  source = feature_readers.Hdf5Source(bad, {"rgb": D_RGB, "flow": D_FLOW})
  source.prepare(sorted(feats))
  with pytest.raises(feature_readers.FeatureError) as err:
    source.read("video_0")
  assert err.value.kind == "features_malformed" and bad in err.value.message


def test_existing_label_map_is_read_and_unknown_classes_rejected(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path))
  dirs = {}
  for stream in ("rgb", "flow"):
    dirs[stream] = os.path.join(str(tmp_path), stream)
    os.makedirs(dirs[stream])
    for vid, s in feats.items():
      np.save(os.path.join(dirs[stream], vid + ".npy"), s[stream])
  lm = os.path.join(str(tmp_path), "lm.pbtxt")
  label_map_util.write_label_map(lm, [(5, "Alpha"), (7, "Beta")])
  args = [f"--annotations={ann}", f"--features=rgb:{dirs['rgb']},flow:{dirs['flow']}",
          f"--feature_fps={FPS}", f"--label_map={lm}"]
  summary = _run_flags(args + [f"--output={os.path.join(str(tmp_path), 'a')}"])
  assert not summary.label_map_written and summary.num_classes == 7
  records = _read_records(summary.shards)
  assert records["video_0"]["labels"].tolist() == [7] and records["video_1"]["labels"] == [5]
  label_map_util.write_label_map(lm, [(1, "Alpha")])
  out = os.path.join(str(tmp_path), "b")
  with pytest.raises(ValueError, match="'Beta'.*not in label map"):
    _run_flags(args + [f"--output={out}"])
  assert not os.path.exists(out + "-00000-of-00001.tfrecord")  # nothing half-written


def test_progress_lines_and_flag_errors(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path), num_videos=3)
  concat = os.path.join(str(tmp_path), "c")
  os.makedirs(concat)
  for vid, s in feats.items():
    np.save(os.path.join(concat, vid + ".npy"), np.concatenate([s["rgb"], s["flow"]], 1))
  stream = io.StringIO()
  create_tfrecord.convert_dataset(
      ann, os.path.join(str(tmp_path), "p"), os.path.join(str(tmp_path), "lm.pbtxt"),
      feature_readers.ConcatNpySource(concat, {"rgb": D_RGB, "flow": D_FLOW}),
      feature_fps=FPS, progress_every_seconds=0.0, progress_stream=stream)
  lines = stream.getvalue().strip().splitlines()
  assert len(lines) == 3 and "3/3 videos" in lines[-1] and "videos/s" in lines[-1]

  fv = cli_util.parse_flags(create_tfrecord, f"--features=rgb:{concat}",
                            f"--concat_features={concat}")
  with pytest.raises(app.UsageError, match="exactly one of"):
    create_tfrecord.feature_source_from_flags(fv)
  fv = cli_util.parse_flags(create_tfrecord, f"--concat_features={concat}")
  with pytest.raises(app.UsageError, match="needs --stream_dims"):
    create_tfrecord.feature_source_from_flags(fv)
  with pytest.raises(ValueError, match="subset \\['training'\\] not found"):
    create_tfrecord.convert_dataset(
        ann, os.path.join(str(tmp_path), "q"), os.path.join(str(tmp_path), "lm.pbtxt"),
        feature_readers.ConcatNpySource(concat, {"rgb": D_RGB, "flow": D_FLOW}),
        subset="training", feature_fps=FPS, progress_stream=None)
  with pytest.raises(ValueError, match="exactly one of feature_fps"):
    create_tfrecord.convert_dataset(
        ann, os.path.join(str(tmp_path), "q"), os.path.join(str(tmp_path), "lm.pbtxt"),
        feature_readers.ConcatNpySource(concat, {"rgb": D_RGB, "flow": D_FLOW}),
        progress_stream=None)


def test_cli_end_to_end_on_synthetic_thumos(tmp_path):
  """The documented path: generate the embedded dataset, convert it with the CLI, read it."""
  from tal_tf.data import input_pipeline
  from tal_tf.core.standard_fields import InputFields as F

  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out_dir = os.path.join(str(tmp_path), "synth")
  gen = subprocess.run(
      [sys.executable, "-m", "tal_tf.dataset_tools.synthetic_thumos", f"--output_dir={out_dir}",
       "--num_videos=2", "--selection=first", "--dims=rgb:8,flow:8", "--seed=3"],
      env=env, capture_output=True, text=True, timeout=120)
  assert gen.returncode == 0, gen.stderr
  prefix = os.path.join(str(tmp_path), "records", "test")
  conv = subprocess.run(
      [sys.executable, "-m", "tal_tf.dataset_tools.create_tfrecord",
       f"--annotations={out_dir}/annotations.json", f"--label_map={out_dir}/label_map.pbtxt",
       f"--features=rgb:{out_dir}/features/rgb,flow:{out_dir}/features/flow",
       "--feature_fps=2.0", "--subset=test", f"--output={prefix}", "--num_shards=2"],
      env=env, capture_output=True, text=True, timeout=300)
  assert conv.returncode == 0, conv.stderr
  assert "Converted 2 of 2 videos" in conv.stdout
  dataset = input_pipeline.build_dataset(prefix + "-*.tfrecord", {"rgb": 8, "flow": 8},
                                         num_classes=20, batch_size=2, is_training=False)
  batch = next(iter(dataset))
  assert sorted(batch[F.video_id].numpy().tolist()) == [b"video_test_0000004",
                                                         b"video_test_0000006"]
  assert int(tf.reduce_min(batch[F.num_segments])) >= 1
  bad = subprocess.run(
      [sys.executable, "-m", "tal_tf.dataset_tools.create_tfrecord",
       f"--annotations={out_dir}/annotations.json", f"--label_map={out_dir}/label_map.pbtxt",
       f"--output={prefix}", "--feature_fps=2.0"],
      env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "exactly one of --features" in bad.stderr


def _npy_dirs(directory, feats):
  dirs = {}
  for stream in ("rgb", "flow"):
    dirs[stream] = os.path.join(directory, stream)
    os.makedirs(dirs[stream], exist_ok=True)
    for vid, s in feats.items():
      np.save(os.path.join(dirs[stream], vid + ".npy"), s[stream])
  return f"--features=rgb:{dirs['rgb']},flow:{dirs['flow']}"


def test_video_labels_weak_and_trimmed_videos(tmp_path):
  """Video labels come from segments and "labels"; weak videos are kept; trimmed clips get
  one [0, duration] segment per label."""
  rng = np.random.default_rng(4)
  db = {
      "full": _entry("train", 10.0, [_ann("Alpha", 1.0, 2.0)]),
      "mixed": _entry("train", 10.0, [_ann("Alpha", 1.0, 2.0)]),
      "weak": _entry("train", 10.0, []),
      "trim": _entry("train", 5.0, []),
      "trim_seg": _entry("train", 5.0, [_ann("Beta", 1.0, 2.0)]),
      "nothing": _entry("train", 10.0, []),
  }
  db["mixed"]["labels"] = ["Gamma", "Ambiguous"]
  db["weak"]["labels"] = ["Beta", "Gamma"]
  db["trim"].update(labels=["Gamma"], trimmed=True)
  db["trim_seg"]["trimmed"] = True
  feats = {vid: _features(rng, 20 if db[vid]["duration"] == 10.0 else 10) for vid in db}
  ann = os.path.join(str(tmp_path), "ann.json")
  with open(ann, "w") as f:
    json.dump({"database": db}, f)
  base = [f"--annotations={ann}", _npy_dirs(str(tmp_path), feats), f"--feature_fps={FPS}",
          f"--label_map={tmp_path}/lm.pbtxt", "--ignore_classes=Ambiguous"]
  summary = _run_flags(base + [f"--output={tmp_path}/a"])
  # A class seen only in video-level "labels" (Gamma) is in the written label map.
  assert label_map_util.get_label_map_dict(f"{tmp_path}/lm.pbtxt") == {
      "Alpha": 1, "Beta": 2, "Gamma": 3}
  records = _read_records(summary.shards)
  assert sorted(records) == sorted(db)  # weak and empty videos are kept
  expect = {"full": [1], "mixed": [1, 3], "weak": [2, 3], "trim": [3], "trim_seg": [2],
            "nothing": []}
  for vid, ids in expect.items():
    assert records[vid]["video_labels"].tolist() == ids, vid
  assert records["weak"]["segments_seconds"].shape == (0, 2)
  np.testing.assert_array_equal(records["trim"]["segments_seconds"], [[0.0, 5.0]])
  np.testing.assert_array_equal(records["trim_seg"]["segments_seconds"], [[0.0, 5.0]])
  assert records["trim_seg"]["labels"].tolist() == [2]
  counts = summary.report.counts
  assert counts["video_labels_only"] == 1 and summary.report.videos("video_labels_only") == [
      "weak"]
  assert summary.report.videos("video_without_segments") == ["nothing"]
  assert summary.report.videos("label_ignored_class") == ["mixed"]
  assert summary.report.videos("trimmed_segment_replaced") == ["trim_seg"]
  assert summary.trimmed is False

  # --trimmed: every video is one action spanning it, labelled by its video-level classes.
  summary = _run_flags(base + [f"--output={tmp_path}/b", "--trimmed"])
  records = _read_records(summary.shards)
  np.testing.assert_array_equal(records["mixed"]["segments_seconds"], [[0, 10], [0, 10]])
  assert records["mixed"]["labels"].tolist() == [1, 3]
  np.testing.assert_array_equal(records["weak"]["segments_seconds"], [[0, 10], [0, 10]])
  assert records["nothing"]["segments_seconds"].shape == (0, 2)
  assert summary.trimmed is True


def test_video_without_subset_is_counted_and_listed(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path), num_videos=3)
  with open(ann) as f:
    data = json.load(f)
  del data["database"]["video_1"]["subset"]
  data["database"]["video_2"]["subset"] = None
  with open(ann, "w") as f:
    json.dump(data, f)
  summary = _run_flags([f"--annotations={ann}", _npy_dirs(str(tmp_path), feats),
                        f"--feature_fps={FPS}", f"--label_map={tmp_path}/lm.pbtxt",
                        "--subset=validation", f"--output={tmp_path}/o"])
  assert summary.num_selected == 1
  assert summary.report.videos("subset_missing") == ["video_1", "video_2"]
  text = summary.format()
  assert "subset_missing: 2" in text and "video_1" in text and "video_2" in text
  with open(summary.summary_json) as f:
    assert json.load(f)["quirks"]["subset_missing"]["count"] == 2


def test_summary_is_not_matched_by_the_shard_glob(tmp_path):
  import glob
  ann, feats = _clean_dataset(str(tmp_path), num_videos=3)
  prefix = os.path.join(str(tmp_path), "rec", "train")
  summary = _run_flags([f"--annotations={ann}", _npy_dirs(str(tmp_path), feats),
                        f"--feature_fps={FPS}", f"--label_map={tmp_path}/lm.pbtxt",
                        f"--output={prefix}", "--num_shards=2"])
  assert summary.summary_json == prefix + ".summary.json"
  assert os.path.isfile(summary.summary_json)
  assert sorted(glob.glob(prefix + "-*")) == sorted(summary.shards)
  assert sorted(tf.io.gfile.glob(prefix + "-*")) == sorted(summary.shards)
  with open(summary.summary_json) as f:
    on_disk = json.load(f)
  assert on_disk["shard_bytes"] == [os.path.getsize(p) for p in summary.shards]
  assert sum(on_disk["shard_records"]) == 3


def test_rerun_with_another_shard_count_removes_only_its_stale_shards(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path), num_videos=4)
  prefix = os.path.join(str(tmp_path), "train")
  base = [f"--annotations={ann}", _npy_dirs(str(tmp_path), feats), f"--feature_fps={FPS}",
          f"--label_map={tmp_path}/lm.pbtxt", f"--output={prefix}"]
  first = _run_flags(base + ["--num_shards=3"])
  # Files that only look alike must survive: another prefix, another suffix.
  keep = [os.path.join(str(tmp_path), n) for n in (
      "train2-00000-of-00003.tfrecord", "train-00000-of-00003.tfrecord.bak",
      "train-x-00000-of-00003.tfrecord")]
  for path in keep:
    with open(path, "w") as f:
      f.write("x")
  second = _run_flags(base + ["--num_shards=2"])
  assert sorted(second.removed_stale_shards) == sorted(first.shards)
  assert not any(os.path.exists(p) for p in first.shards)
  assert all(os.path.exists(p) for p in keep)
  assert "Removed 3 stale shard(s)" in second.format()
  records = []
  for path in tf.io.gfile.glob(prefix + "-*.tfrecord"):
    records += [sequence_example.decode_sequence_example_numpy(r)["video_id"]
                for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
  assert sorted(records) == sorted(feats)  # each video once
  with open(second.summary_json) as f:
    assert sorted(json.load(f)["removed_stale_shards"]) == sorted(first.shards)


class _FailingSource:
  """Feature source that fails hard at the n-th video (a crash mid-conversion)."""

  def __init__(self, inner, fail_at):
    self.inner, self.fail_at, self.count = inner, fail_at, 0
    self.length_tolerance = 0.1

  def prepare(self, video_ids):
    return self.inner.prepare(video_ids)

  def video(self, video_id):
    self.count += 1
    if self.count == self.fail_at:
      raise RuntimeError("simulated crash")
    return self.inner.video(video_id)


def test_failed_run_leaves_previous_outputs_untouched(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path), num_videos=4)
  flag = _npy_dirs(str(tmp_path), feats)
  prefix = os.path.join(str(tmp_path), "out", "train")
  base = [f"--annotations={ann}", flag, f"--feature_fps={FPS}",
          f"--label_map={tmp_path}/lm.pbtxt", f"--output={prefix}", "--num_shards=2"]
  first = _run_flags(base)
  before = {p: open(p, "rb").read() for p in first.shards + [first.summary_json]}
  source = feature_readers.NpyDirSource(
      feature_readers.parse_stream_paths(flag.split("=", 1)[1], "dir"))
  with pytest.raises(RuntimeError, match="simulated crash"):
    create_tfrecord.convert_dataset(ann, prefix, f"{tmp_path}/lm.pbtxt",
                                    _FailingSource(source, 3), num_shards=2,
                                    feature_fps=FPS, progress_stream=None)
  after = {p: open(p, "rb").read() for p in before}
  assert after == before
  assert sorted(os.listdir(os.path.dirname(prefix))) == sorted(
      os.path.basename(p) for p in before)  # no temporaries left behind


def test_cli_errors_are_one_line_naming_the_file(tmp_path):
  ann, feats = _clean_dataset(str(tmp_path), num_videos=2)
  flag = _npy_dirs(str(tmp_path), feats)
  bad_json = os.path.join(str(tmp_path), "bad.json")
  with open(bad_json, "w") as f:
    f.write("{not json")
  weak_bad = os.path.join(str(tmp_path), "labels.json")
  with open(weak_bad, "w") as f:
    json.dump({"database": {"v": {"subset": "a", "labels": "Alpha"}}}, f)
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cases = [
      ([f"--annotations={bad_json}", flag], bad_json),
      ([f"--annotations={weak_bad}", flag], "field 'labels': expected a list of class names"),
      ([f"--annotations={ann}", f"--features=rgb:{tmp_path}/nope,flow:{tmp_path}/nope"],
       f"{tmp_path}/nope"),
      ([f"--annotations={ann}", flag, "--subset=training"], "subset ['training'] not found"),
  ]
  script = ("import sys; from tal_tf.dataset_tools import create_tfrecord as c; "
            "from absl import app; c.define_flags(); app.run(c.main)")
  for args, fragment in cases:
    run = subprocess.run(
        [sys.executable, "-c", script, f"--label_map={tmp_path}/lm.pbtxt",
         f"--output={tmp_path}/o", f"--feature_fps={FPS}"] + args,
        env=env, capture_output=True, text=True, timeout=120)
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and lines[0].startswith("create_tfrecord: error: "), run.stderr
    assert fragment in lines[0], lines[0]
