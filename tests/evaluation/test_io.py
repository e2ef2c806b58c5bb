"""Annotation / results / Ambiguous loaders: good files parse, bad ones name file + field."""

import json
import math

import numpy as np
import pytest

from tal_tf.evaluation import io as eval_io


def write(tmp_path, name, data):
  path = tmp_path / name
  path.write_text(data if isinstance(data, str) else json.dumps(data))
  return str(path)


GOOD_GT = {"version": "x", "database": {
    "v1": {"subset": "Validation", "duration": 30.0, "fps": 30.0,
           "annotations": [{"segment": [1.0, 5.5], "label": "Jump"},
                           {"segment": [10, 12], "label": "Run"}]},
    "v2": {"subset": "Test", "duration": 20.0,
           "annotations": [{"segment": [0.0, 2.0], "label": "Jump"}]},
    "v3": {"subset": "validation", "duration": 10.0, "annotations": []}}}


def test_load_annotations_and_subset_case_insensitive(tmp_path):
  path = write(tmp_path, "gt.json", GOOD_GT)
  gt = eval_io.load_annotations(path, subset="VALIDATION")
  assert sorted(gt) == ["v1", "v3"]
  np.testing.assert_array_equal(gt["v1"]["segments"], [[1.0, 5.5], [10.0, 12.0]])
  assert list(gt["v1"]["labels"]) == ["Jump", "Run"]
  assert gt["v1"]["duration"] == 30.0 and gt["v3"]["segments"].shape == (0, 2)
  assert sorted(eval_io.load_annotations(path)) == ["v1", "v2", "v3"]


def test_unknown_subset_lists_the_available_ones(tmp_path):
  path = write(tmp_path, "gt.json", GOOD_GT)
  with pytest.raises(eval_io.EvaluationFormatError, match=r"gt\.json.*'training'.*Test"):
    eval_io.load_annotations(path, subset="training")


@pytest.mark.parametrize("video, match", [
    ({"subset": "test", "annotations": [{"segment": [5, 1], "label": "a"}]},
     r"video 'bad'.*annotations\[0\]\.segment.*end >= start"),
    ({"subset": "test", "annotations": [{"segment": ["x", 1], "label": "a"}]},
     r"annotations\[0\]\.segment.*two numbers"),
    ({"subset": "test", "annotations": [{"segment": [1, 2, 3], "label": "a"}]},
     r"annotations\[0\]\.segment"),
    ({"subset": "test", "annotations": [{"label": "a"}]},
     r"annotations\[0\]\.segment.*missing"),
    ({"subset": "test", "annotations": [{"segment": [0, 1]}]},
     r"annotations\[0\]\.label.*missing"),
    ({"subset": "test", "annotations": [{"segment": [0, 1], "label": 3}]},
     r"annotations\[0\]\.label.*class name"),
    ({"subset": "test"}, r"field 'annotations'.*missing"),
    ({"subset": "test", "duration": "long", "annotations": []}, r"field 'duration'"),
    ({"annotations": []}, r"field 'subset'.*missing"),
])
def test_malformed_annotations_name_file_video_and_field(tmp_path, video, match):
  path = write(tmp_path, "broken_gt.json", {"database": {"bad": video}})
  with pytest.raises(eval_io.EvaluationFormatError, match=r"broken_gt\.json") as err:
    eval_io.load_annotations(path, subset="test")
  assert err.match(match)


def test_annotations_without_database_key(tmp_path):
  path = write(tmp_path, "nodb.json", {"videos": {}})
  with pytest.raises(eval_io.EvaluationFormatError, match=r"nodb\.json.*database"):
    eval_io.load_annotations(path)


def test_invalid_json_and_missing_file(tmp_path):
  path = write(tmp_path, "junk.json", "{not json")
  with pytest.raises(eval_io.EvaluationFormatError, match=r"junk\.json.*not valid JSON"):
    eval_io.load_annotations(path)
  with pytest.raises(FileNotFoundError, match="nothere.json"):
    eval_io.load_results(str(tmp_path / "nothere.json"))


def test_load_results_round_trip(tmp_path):
  results = {"v1": {"segments": np.array([[0.0, 1.5], [2.0, 3.0]]),
                    "labels": np.array(["Jump", "Run"], object),
                    "scores": np.array([0.9, 0.25])},
             "v2": {"segments": np.zeros((0, 2)), "labels": np.array([], object),
                    "scores": np.zeros(0)}}
  path = eval_io.write_results(str(tmp_path / "out" / "res.json"), results)
  loaded = eval_io.load_results(path)
  assert sorted(loaded) == ["v1", "v2"]
  np.testing.assert_array_equal(loaded["v1"]["segments"], results["v1"]["segments"])
  np.testing.assert_array_equal(loaded["v1"]["scores"], [0.9, 0.25])
  assert list(loaded["v1"]["labels"]) == ["Jump", "Run"]
  assert loaded["v2"]["segments"].shape == (0, 2)
  raw = json.loads(open(path).read())
  assert raw["results"]["v1"][0] == {"segment": [0.0, 1.5], "label": "Jump", "score": 0.9}


@pytest.mark.parametrize("entry, match", [
    ({"segment": [0, 1], "label": "a", "score": float("nan")},
     r"results\[1\]\.score.*finite number.*nan"),
    ({"segment": [0, 1], "label": "a", "score": "high"}, r"results\[1\]\.score"),
    ({"segment": [0, 1], "label": "a", "score": True}, r"results\[1\]\.score"),
    ({"segment": [0, 1], "label": "a"}, r"results\[1\]\.score.*missing"),
    ({"segment": [3, 1], "label": "a", "score": 0.5}, r"results\[1\]\.segment.*end >= start"),
    ({"segment": [0, float("inf")], "label": "a", "score": 0.5}, r"results\[1\]\.segment.*finite"),
    ({"label": "a", "score": 0.5}, r"results\[1\]\.segment.*missing"),
    ({"segment": [0, 1], "score": 0.5}, r"results\[1\]\.label.*missing"),
    ({"segment": [0, 1], "label": "", "score": 0.5}, r"results\[1\]\.label"),
    ("oops", r"results\[1\].*expected an object"),
])
def test_malformed_results_name_file_video_and_field(tmp_path, entry, match):
  good = {"segment": [0, 1], "label": "a", "score": 0.5}
  text = json.dumps({"results": {"vid7": [good, entry]}})   # NaN / Infinity literals allowed
  path = write(tmp_path, "broken_res.json", text)
  with pytest.raises(eval_io.EvaluationFormatError,
                     match=r"file '.*broken_res\.json', video 'vid7'") as err:
    eval_io.load_results(path)
  assert err.match(match)


def test_results_without_labels_allowed_for_proposals(tmp_path):
  path = write(tmp_path, "props.json",
               {"results": {"v": [{"segment": [0, 1], "score": 0.5}]}})
  loaded = eval_io.load_results(path, require_labels=False)
  assert loaded["v"]["labels"][0] is None
  with pytest.raises(eval_io.EvaluationFormatError, match="label"):
    eval_io.load_results(path)


def test_results_not_a_list_or_missing_key(tmp_path):
  with pytest.raises(eval_io.EvaluationFormatError, match=r"r1\.json.*'results'"):
    eval_io.load_results(write(tmp_path, "r1.json", {"detections": {}}))
  with pytest.raises(eval_io.EvaluationFormatError, match=r"r2\.json.*video 'v'.*list"):
    eval_io.load_results(write(tmp_path, "r2.json", {"results": {"v": {"segment": [0, 1]}}}))


def test_write_results_rejects_bad_arrays(tmp_path):
  bad = {"v": {"segments": np.array([[2.0, 1.0]]), "labels": ["a"], "scores": [0.5]}}
  with pytest.raises(eval_io.EvaluationFormatError, match=r"video 'v'.*end >= start"):
    eval_io.write_results(str(tmp_path / "x.json"), bad)
  bad = {"v": {"segments": np.array([[0.0, 1.0]]), "labels": ["a"], "scores": [math.nan]}}
  with pytest.raises(eval_io.EvaluationFormatError, match=r"video 'v'.*scores"):
    eval_io.write_results(str(tmp_path / "x.json"), bad)


def test_ambiguous_from_directory_txt_and_json(tmp_path):
  d = tmp_path / "annotation_test"
  d.mkdir()
  (d / "Ambiguous_test.txt").write_text("video_a  0.0 1.4\nvideo_a  95.7 97.2\n"
                                        "video_b 50.6 54.6\n")
  (d / "Ambiguous_val.txt").write_text("video_c 1 2\n")
  amb = eval_io.load_ambiguous_segments(str(d), subset="Test")
  np.testing.assert_array_equal(amb["video_a"], [[0.0, 1.4], [95.7, 97.2]])
  assert sorted(amb) == ["video_a", "video_b"]
  assert sorted(eval_io.load_ambiguous_segments(str(d), subset="validation")) == ["video_c"]
  assert sorted(eval_io.load_ambiguous_segments(str(d / "Ambiguous_val.txt"))) == ["video_c"]
  with pytest.raises(FileNotFoundError, match="training"):
    eval_io.load_ambiguous_segments(str(d), subset="training")
  gt = {"database": {"v": {"subset": "test", "annotations": [
      {"segment": [1, 2], "label": "ambiguous"}, {"segment": [3, 4], "label": "Jump"}]}}}
  amb = eval_io.load_ambiguous_segments(write(tmp_path, "g.json", gt), subset="test")
  np.testing.assert_array_equal(amb["v"], [[1.0, 2.0]])


def test_ambiguous_txt_bad_line_names_file_and_line(tmp_path):
  path = tmp_path / "Ambiguous_test.txt"
  path.write_text("video_a 0.0 1.0\nvideo_b 2.0\n")
  with pytest.raises(eval_io.EvaluationFormatError, match=r"Ambiguous_test\.txt.*line 2"):
    eval_io.load_ambiguous_segments(str(path))


def test_split_ambiguous():
  gt = {"v": {"segments": np.array([[0.0, 1.0], [2.0, 3.0]]),
              "labels": np.array(["Ambiguous", "Jump"], object)}}
  clean, amb = eval_io.split_ambiguous(gt)
  assert list(clean["v"]["labels"]) == ["Jump"]
  np.testing.assert_array_equal(amb["v"], [[0.0, 1.0]])
