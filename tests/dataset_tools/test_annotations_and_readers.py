"""Annotation loading / cleaning and the untrusted feature readers, unit by unit."""

import json
import os

import numpy as np
import pytest

from tal_tf.dataset_tools import annotations as ann_lib
from tal_tf.dataset_tools import feature_readers as fr
from tal_tf.dataset_tools import quirks


def _write_json(tmp_path, obj, name="a.json"):
  path = os.path.join(str(tmp_path), name)
  with open(path, "w") as f:
    f.write(obj if isinstance(obj, str) else json.dumps(obj))
  return path


def test_load_database_structure_errors(tmp_path):
  with pytest.raises(ann_lib.AnnotationError, match="not valid JSON"):
    ann_lib.load_database(_write_json(tmp_path, "{not json"))
  with pytest.raises(ann_lib.AnnotationError, match="'database'"):
    ann_lib.load_database(_write_json(tmp_path, {"videos": {}}))
  with pytest.raises(ann_lib.AnnotationError,
                     match="video 'v', field 'annotations': expected a list"):
    ann_lib.load_database(_write_json(tmp_path, {"database": {"v": {"annotations": 3}}}))
  with pytest.raises(ann_lib.AnnotationError, match="field 'trimmed': expected true or false"):
    ann_lib.load_database(_write_json(tmp_path, {"database": {"v": {"trimmed": "yes"}}}))
  with pytest.raises(ann_lib.AnnotationError, match="does not exist"):
    ann_lib.load_database(os.path.join(str(tmp_path), "absent.json"))
  with pytest.raises(FileNotFoundError):  # also an OSError for callers that expect one
    ann_lib.load_database(os.path.join(str(tmp_path), "absent.json"))


def test_one_annotation_parser_for_converter_and_evaluator(tmp_path):
  """The evaluator's loader is the converter's module; only the policy differs."""
  from tal_tf.evaluation import io as eval_io  # pylint: disable=g-import-not-at-top
  assert eval_io.load_annotations is ann_lib.load_annotations
  assert eval_io.EvaluationFormatError is ann_lib.AnnotationError
  path = _write_json(tmp_path, {"database": {
      "a": {"subset": "Test", "annotations": [{"segment": [5, 1], "label": "X"}]},
      "b": {"subset": "Test", "annotations": [{"segment": [1, 2], "label": "X"}]}}})
  # Strict (evaluator): an inverted segment is an error naming file, video and field.
  with pytest.raises(ann_lib.AnnotationError,
                     match=r"video 'a', field 'annotations\[0\]\.segment'.*end >= start"):
    ann_lib.load_annotations(path, subset="test")
  # Lenient (converter): the same entry is dropped and reported.
  database = ann_lib.load_database(path)
  report = quirks.QuirkReport()
  assert ann_lib.select_videos(database, "test", path, report) == ["a", "b"]
  segments, names = ann_lib.clean_segments("a", database["a"], 10.0, report)
  assert segments.shape == (0, 2) and names == []
  assert report.counts["segment_degenerate"] == 1
  # A video without a subset: reported by the converter, an error for the evaluator.
  path = _write_json(tmp_path, {"database": {"a": {"annotations": []},
                                              "b": {"subset": "test", "annotations": []}}},
                     "nosubset.json")
  report = quirks.QuirkReport()
  assert ann_lib.select_videos(ann_lib.load_database(path), "test", path, report) == ["b"]
  assert report.videos("subset_missing") == ["a"]
  with pytest.raises(ann_lib.AnnotationError, match="video 'a', field 'subset'"):
    ann_lib.load_annotations(path, subset="test")


def test_select_videos_case_insensitive_and_lists():
  db = {"b": {"subset": "Validation"}, "a": {"subset": "validation"},
        "c": {"subset": "Test"}, "d": {"subset": "training"}}
  assert ann_lib.select_videos(db, "validation") == ["a", "b"]
  assert ann_lib.select_videos(db, "VALIDATION,test") == ["a", "b", "c"]
  assert ann_lib.select_videos(db, None) == ["a", "b", "c", "d"]
  with pytest.raises(ann_lib.AnnotationError, match="subsets present"):
    ann_lib.select_videos(db, "testing")


def test_clean_segments_rules_hand_worked():
  report = quirks.QuirkReport()
  entry = {"annotations": [
      {"segment": [1, 2], "label": "A"},
      {"segment": [8, 11], "label": "B"},          # clipped to [8, 10]
      {"segment": [10, 12], "label": "A"},         # starts at the end: outside
      {"segment": [3, 3], "label": "A"},           # zero length
      {"segment": [4, 3.5], "label": "B"},         # inverted
      {"segment": [1, 2], "label": "Ambiguous"},   # ignored
      {"segment": [1, float("nan")], "label": "A"},  # malformed
      {"segment": [1, 2, 3], "label": "A"},        # malformed
      ["not", "a", "dict"],                        # malformed
  ]}
  segments, names = ann_lib.clean_segments("v", entry, 10.0, report, ["Ambiguous"])
  np.testing.assert_array_equal(segments, [[1, 2], [8, 10]])
  assert names == ["A", "B"]
  assert dict(report.counts) == {"segment_clipped": 1, "segment_outside_video": 1,
                                 "segment_degenerate": 2, "segment_ignored_class": 1,
                                 "segment_malformed": 3}
  assert "[8.0, 11.0] -> [8.0, 10.0]" in report.format()
  with pytest.raises(KeyError, match="unknown quirk kind"):
    report.add("nonsense", "v")


def test_class_names_cover_all_subsets_minus_ignored():
  db = {"x": {"subset": "a", "annotations": [{"label": "Zed"}, {"label": "Ambiguous"}]},
        "y": {"subset": "b", "annotations": [{"label": "Alpha"}]}}
  assert ann_lib.class_names(db, ["Ambiguous"]) == ["Alpha", "Zed"]


@pytest.mark.parametrize("text, fragment", [
    ("rgb", "expected NAME:DIM"), ("rgb:0", "DIM >= 1"), ("rgb:x", "NAME:DIM"),
    ("rgb:4,rgb:5", "given twice"), ("", "no streams"),
])
def test_parse_stream_dims_errors(text, fragment):
  with pytest.raises(ValueError, match=fragment):
    fr.parse_stream_dims(text)


def test_parse_stream_dims_and_paths():
  assert list(fr.parse_stream_dims("rgb:1024, flow:512").items()) == [("rgb", 1024),
                                                                       ("flow", 512)]
  assert fr.parse_stream_paths("rgb:/a:b/c,flow:d") == {"rgb": "/a:b/c", "flow": "d"}
  with pytest.raises(ValueError, match="NAME:DIR"):
    fr.parse_stream_paths("rgbdir", "dir")


@pytest.mark.parametrize("array, kind", [
    (np.zeros((0, 3), np.float32), "features_empty"),
    (np.zeros((4, 2), np.float32), "features_wrong_dim"),
    (np.zeros((4, 3, 1), np.float32), "features_wrong_dim"),
    (np.array([["a", "b", "c"]]), "features_malformed"),
    (np.array([[1, 2, np.inf]]), "features_non_finite"),
    (np.array([[1e300, 0, 0]]), "features_non_finite"),  # overflows float32
    (np.zeros((1, 3), dtype=[("x", "f4")] * 1).view(np.recarray), "features_malformed"),
])
def test_check_features_kinds(array, kind):
  with pytest.raises(fr.FeatureError) as err:
    fr.check_features(array, 3, "here")
  assert err.value.kind == kind and "here" in err.value.message


def test_check_features_casts_numeric_to_float32():
  out = fr.check_features(np.arange(6, dtype=np.int16).reshape(2, 3), 3, "x")
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, [[0, 1, 2], [3, 4, 5]])


def test_npy_rows_refuse_pickles_archives_and_truncation(tmp_path):
  obj = os.path.join(str(tmp_path), "obj.npy")
  np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(fr.FeatureError) as err:
    fr.NpyRows(obj)
  assert err.value.kind == "features_malformed" and "unpickling" in err.value.message
  npz = os.path.join(str(tmp_path), "arch.npy")
  with open(npz, "wb") as f:
    np.savez(f, a=np.zeros(3))
  with pytest.raises(fr.FeatureError, match="without pickle") as err:
    fr.NpyRows(npz)
  assert err.value.kind == "features_malformed"
  with pytest.raises(fr.FeatureError) as err:
    fr.NpyRows(os.path.join(str(tmp_path), "absent.npy"))
  assert err.value.kind == "features_missing"
  cut = os.path.join(str(tmp_path), "cut.npy")
  np.save(cut, np.ones((4, 3), np.float32))
  with open(cut, "r+b") as f:
    f.truncate(os.path.getsize(cut) - 4)
  with pytest.raises(fr.FeatureError, match="truncated"):
    fr.NpyRows(cut)


def test_npy_rows_read_windows_c_and_fortran_order(tmp_path):
  values = np.arange(40, dtype=np.float64).reshape(10, 4)
  for name, array in (("c", values), ("f", np.asfortranarray(values))):
    path = os.path.join(str(tmp_path), name + ".npy")
    np.save(path, array)
    rows = fr.NpyRows(path)
    assert rows.fortran_order == (name == "f")
    np.testing.assert_array_equal(rows.read(3, 7), values[3:7])
    np.testing.assert_array_equal(rows.read(0, 10), values)


def test_one_reader_family_for_converter_and_inference(tmp_path):
  """Inference reads features with the converter's readers: same classes, same checks."""
  from tal_tf.inference import inference_lib  # pylint: disable=g-import-not-at-top
  assert inference_lib.feature_readers is fr
  d = {s: os.path.join(str(tmp_path), s) for s in ("rgb", "flow")}
  for s, dim in (("rgb", 3), ("flow", 2)):
    os.makedirs(d[s])
    values = np.arange(12 * dim, dtype=np.float32).reshape(12, dim)
    if s == "flow":
      values = values[:11]  # one step shorter: trimmed to the common length
      values[9, 0] = np.nan
    np.save(os.path.join(d[s], "v.npy"), values)
  source = fr.NpyDirSource(d, {"rgb": 3, "flow": 2}, feature_fps=2.0)
  video = source.video("v")
  assert video.num_steps == 11 and video.stream_lengths == {"rgb": 12, "flow": 11}
  np.testing.assert_array_equal(video.read(2, 5)["rgb"],
                                np.arange(36, dtype=np.float32).reshape(12, 3)[2:5])
  with pytest.raises(fr.FeatureError, match=r"stream 'flow' of video 'v'.*steps \[9\]"):
    video.read(8, 11)
  with pytest.raises(fr.FeatureError) as err:
    source.read("v")  # the converter's whole-video read: same check
  assert err.value.kind == "features_non_finite"
  pairs = list(source)
  assert [v for v, _ in pairs] == ["v"] and isinstance(pairs[0][1], fr.Video)


def test_npy_dir_dim_inference_uses_most_common_dim(tmp_path):
  d = os.path.join(str(tmp_path), "rgb")
  os.makedirs(d)
  for i, dim in enumerate([5, 5, 7]):
    np.save(os.path.join(d, f"v{i}.npy"), np.ones((3, dim), np.float32))
  source = fr.NpyDirSource({"rgb": d})
  assert source.prepare(["v0", "v1", "v2", "absent"]) == {"rgb": 5}
  assert source.read("v0")["rgb"].shape == (3, 5)
  with pytest.raises(fr.FeatureError) as err:
    source.read("v2")
  assert err.value.kind == "features_wrong_dim"
  with pytest.raises(ValueError, match="cannot infer"):
    fr.NpyDirSource({"rgb": d}).prepare(["absent"])
  with pytest.raises(ValueError, match="does not exist"):
    fr.NpyDirSource({"rgb": os.path.join(d, "nope")})
