"""Results and annotation files that disagree with each other or with themselves: a repeated
video id, results keyed by other video ids, unknown labels, and a results write that fails
part way. Each must be an error naming the file or a counted note, never a silent score."""

import json
import os

import numpy as np
import pytest

from tal_tf.evaluation import evaluate_main
from tal_tf.evaluation import io as eval_io
from tests import fault_util

GT = {"database": {
    "video_test_1": {"subset": "Test", "duration": 60.0, "annotations": [
        {"segment": [0.0, 10.0], "label": "Jump"},
        {"segment": [20.0, 30.0], "label": "Run"}]},
    "video_test_2": {"subset": "Test", "duration": 60.0, "annotations": [
        {"segment": [5.0, 15.0], "label": "Jump"}]},
    "video_val_1": {"subset": "Validation", "duration": 60.0, "annotations": [
        {"segment": [0.0, 10.0], "label": "Swim"}]}}}

DETECTIONS = {
    "video_test_1": [{"segment": [0.0, 9.0], "label": "Jump", "score": 0.9},
                     {"segment": [22.0, 30.0], "label": "Run", "score": 0.7}],
    "video_test_2": [{"segment": [5.0, 10.0], "label": "Jump", "score": 0.6}]}


def _write(path, text):
  path.write_text(text)
  return str(path)


@pytest.fixture
def gt_path(tmp_path):
  return _write(tmp_path / "gt.json", json.dumps(GT))


def _evaluate(gt_path, results_path, **kwargs):
  metrics, _ = evaluate_main.run_evaluation(gt_path, results_path, subset="test",
                                            tiou_thresholds="0.5", **kwargs)
  return metrics


def test_a_video_listed_twice_in_results_is_an_error(gt_path, tmp_path):
  # Python's json keeps the last of two equal keys: the second (empty) list would replace
  # video_test_1's detections and lower the score without a word.
  body = ", ".join(f'"{v}": {json.dumps(d)}' for v, d in DETECTIONS.items())
  path = _write(tmp_path / "dup.json", '{"results": {' + body + ', "video_test_1": []}}')
  with pytest.raises(eval_io.EvaluationFormatError,
                     match=r"dup\.json'.*'video_test_1' appears twice"):
    _evaluate(gt_path, path)


def test_a_video_listed_twice_in_annotations_is_an_error(tmp_path):
  entry = json.dumps(GT["database"]["video_test_2"])
  path = _write(tmp_path / "gt_dup.json",
                '{"database": {"video_test_2": ' + entry + ', "video_test_2": ' + entry + '}}')
  with pytest.raises(eval_io.EvaluationFormatError,
                     match=r"gt_dup\.json'.*'video_test_2' appears twice"):
    eval_io.load_annotations(path)


def test_results_naming_no_annotated_video_are_an_error(gt_path, tmp_path):
  # E.g. ActivityNet ids with a 'v_' prefix on one side only, or results of another subset:
  # every class would score 0 with nothing to say why.
  renamed = {"v_" + v: d for v, d in DETECTIONS.items()}
  path = _write(tmp_path / "renamed.json", json.dumps({"results": renamed}))
  with pytest.raises(eval_io.EvaluationFormatError,
                     match=r"renamed\.json'.*none of its 2 video ids.*'v_video_test_1'.*"
                           r"--subset 'test'.*'video_test_1'"):
    _evaluate(gt_path, path)
  with pytest.raises(eval_io.EvaluationFormatError, match="none of its 2 video ids"):
    _evaluate(gt_path, path, proposals=True)
  good = _write(tmp_path / "good.json", json.dumps({"results": DETECTIONS}))
  with pytest.raises(eval_io.EvaluationFormatError, match=r"renamed\.json'.*none of its"):
    _evaluate(gt_path, good, threshold_results={0.5: path})


def test_partial_mismatches_are_counted_and_reported(gt_path, tmp_path):
  results = {"video_test_1": DETECTIONS["video_test_1"] + [
      {"segment": [1.0, 2.0], "label": "class_7", "score": 0.5},
      {"segment": [3.0, 4.0], "label": "Jmup", "score": 0.4},
      {"segment": [3.0, 4.0], "label": "Swim", "score": 0.3}],   # a class of another subset
             "video_val_1": []}
  path = _write(tmp_path / "partial.json", json.dumps({"results": results}))
  metrics = _evaluate(gt_path, path)
  assert metrics["videos_without_results"] == 1            # video_test_2
  assert metrics["unannotated_result_videos"] == 1         # video_val_1 is not in 'test'
  assert metrics["unknown_label_predictions"] == {"Jmup": 1, "class_7": 1}
  assert metrics["num_ignored_predictions"] == 3           # the protocol's own count
  notes = eval_io.input_notes(metrics)
  assert notes == ["(1 annotated videos have no results: scored as no detections)",
                   "(1 videos of the results are not in the annotated subset)",
                   "(2 predictions with labels that no annotation of the file uses: 'Jmup', "
                   "'class_7')"]


def test_matching_results_score_as_before_with_no_notes(gt_path, tmp_path):
  path = _write(tmp_path / "ok.json", json.dumps({"results": DETECTIONS}))
  metrics = _evaluate(gt_path, path)
  # Jump: TP 0.9, TP 0.6 (tIoU 0.5) -> AP 1; Run: TP -> AP 1.
  np.testing.assert_allclose(metrics["mAP"], [1.0])
  assert eval_io.input_notes(metrics) == []
  empty = _write(tmp_path / "empty.json", json.dumps({"results": {}}))
  # No detections at all is a valid (if poor) result: scored, and the missing videos counted.
  metrics = _evaluate(gt_path, empty)
  np.testing.assert_allclose(metrics["mAP"], [0.0])
  assert metrics["videos_without_results"] == 2


def test_write_results_on_a_full_disk_keeps_the_previous_file(tmp_path):
  disk = str(tmp_path / "disk")
  with fault_util.small_disk(disk, 256 * 1024):
    path = os.path.join(disk, "results.json")
    old = {"video_test_1": {"segments": [[0.0, 1.0]], "labels": ["Jump"], "scores": [0.5]}}
    eval_io.write_results(path, old)
    before = open(path, "rb").read()
    fault_util.fill_disk(disk)
    n = 20000
    big = {"video_test_1": {"segments": np.tile([[0.0, 1.0]], (n, 1)),
                            "labels": ["Jump"] * n, "scores": np.linspace(0, 1, n)}}
    with pytest.raises(OSError):
      eval_io.write_results(path, big)
    assert open(path, "rb").read() == before
    assert eval_io.load_results(path)["video_test_1"]["scores"].tolist() == [0.5]
    assert sorted(os.listdir(disk)) == ["filler.bin", "results.json"]
