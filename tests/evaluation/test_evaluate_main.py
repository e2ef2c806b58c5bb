"""The evaluation CLI end to end on a tiny annotation/results pair."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tal_tf.evaluation import evaluate_main
from tal_tf.evaluation import metrics_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GT = {"database": {
    "video_test_1": {"subset": "Test", "duration": 60.0, "annotations": [
        {"segment": [0.0, 10.0], "label": "Jump"},
        {"segment": [20.0, 30.0], "label": "Run"},
        {"segment": [40.0, 50.0], "label": "Ambiguous"}]},
    "video_test_2": {"subset": "Test", "duration": 60.0, "annotations": [
        {"segment": [5.0, 15.0], "label": "Jump"}]},
    "video_val_1": {"subset": "Validation", "duration": 60.0, "annotations": [
        {"segment": [0.0, 10.0], "label": "Swim"}]}}}

RESULTS = {"results": {
    "video_test_1": [
        {"segment": [0.0, 9.0], "label": "Jump", "score": 0.9},      # tIoU 0.9
        {"segment": [41.0, 44.0], "label": "Jump", "score": 0.8},    # on the Ambiguous stretch
        {"segment": [22.0, 30.0], "label": "Run", "score": 0.7}],    # tIoU 0.8
    "video_test_2": [
        {"segment": [5.0, 10.0], "label": "Jump", "score": 0.6}]}}   # tIoU 0.5


@pytest.fixture
def files(tmp_path):
  gt_path = tmp_path / "gt.json"
  res_path = tmp_path / "results.json"
  gt_path.write_text(json.dumps(GT))
  res_path.write_text(json.dumps(RESULTS))
  return str(gt_path), str(res_path), tmp_path


def test_cli_subprocess_prints_table_and_writes_json(files):
  gt_path, res_path, tmp_path = files
  out_json = tmp_path / "metrics.json"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, "-m", "tal_tf.evaluation.evaluate_main", f"--annotations={gt_path}",
       f"--results={res_path}", "--subset=test", "--tiou_thresholds=0.5,0.9",
       f"--output_json={out_json}", "--per_class"],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  # ActivityNet rules at 0.5: Jump ranked TP(0.9), FP(0.8, no ambiguity handling), TP(0.6, tIoU
  # exactly 0.5): precision 1, 1/2, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6; Run: AP 1.
  # mAP@0.5 = (5/6 + 1) / 2 = 0.91667. At 0.9: Jump TP only at rank 1 -> 1/2; Run 0.8 < 0.9
  # -> 0; mAP@0.9 = 0.25. Average = 0.58333.
  assert "Detection mAP (activitynet protocol, 2 classes, 2 videos)" in proc.stdout
  assert "91.67" in proc.stdout and "25.00" in proc.stdout and "58.33" in proc.stdout
  assert "Jump" in proc.stdout and "Run" in proc.stdout
  metrics = json.loads(out_json.read_text())
  assert metrics["class_names"] == ["Jump", "Run"]
  assert metrics["mAP_by_tiou"]["0.5"] == pytest.approx(11 / 12)
  assert metrics["mAP_by_tiou"]["0.9"] == pytest.approx(0.25)
  assert metrics["average_mAP"] == pytest.approx(7 / 12)
  assert metrics["per_class_ap"]["Jump"] == pytest.approx([5 / 6, 0.5])


def test_thumos14_protocol_uses_ambiguous_and_strict_threshold(files):
  gt_path, res_path, _ = files
  metrics, _ = evaluate_main.run_evaluation(gt_path, res_path, subset="Test",
                                            protocol="thumos14", tiou_thresholds="0.5,0.9")
  # THUMOS14 rules at 0.5: the Ambiguous-overlapping Jump detection is dropped and the tIoU-0.5
  # one is not a match (strict >): Jump ranked TP, FP -> AP = 1 / 2 gts = 0.5; Run AP 1.
  # At 0.9 nothing exceeds the threshold (0.9 is not > 0.9): mAP 0.
  np.testing.assert_allclose(metrics["ap"][0], [0.5, 1.0])
  np.testing.assert_allclose(metrics["mAP"], [0.75, 0.0])
  assert metrics["num_ambiguous_segments"] == 1
  table = metrics_table.format_metrics_table(metrics)
  assert "thumos14 protocol" in table and "75.00" in table


def test_thumos14_ambiguous_from_official_txt_directory(files):
  gt_path, res_path, tmp_path = files
  gt = json.loads(open(gt_path).read())
  gt["database"]["video_test_1"]["annotations"].pop()          # no Ambiguous in the JSON
  gt_no_amb = tmp_path / "gt_no_amb.json"
  gt_no_amb.write_text(json.dumps(gt))
  amb_dir = tmp_path / "annotation_test"
  amb_dir.mkdir()
  (amb_dir / "Ambiguous_test.txt").write_text("video_test_1 40.0 50.0\n")
  without, _ = evaluate_main.run_evaluation(str(gt_no_amb), res_path, subset="test",
                                            protocol="thumos14", tiou_thresholds=[0.4])
  with_amb, _ = evaluate_main.run_evaluation(str(gt_no_amb), res_path, subset="test",
                                             protocol="thumos14", tiou_thresholds=[0.4],
                                             ambiguous_annotations=str(amb_dir))
  # At 0.4 the tIoU-0.5 detection matches. Jump without Ambiguous: TP(0.9), FP(0.8), TP(0.6)
  # -> (1 + 2/3) / 2 = 5/6; with the 0.8 detection removed: TP, TP -> 1.
  np.testing.assert_allclose(without["ap"][0], [5 / 6, 1.0])
  np.testing.assert_allclose(with_amb["ap"][0], [1.0, 1.0])
  assert with_amb["num_ambiguous_segments"] == 1 and without["num_ambiguous_segments"] == 0


def test_proposals_mode_reports_ar_at_an(files, tmp_path):
  gt_path, res_path, _ = files
  metrics, _ = evaluate_main.run_evaluation(gt_path, res_path, subset="test", proposals=True,
                                            tiou_thresholds="0.5", max_avg_nr_proposals=2,
                                            ar_at=(2,))
  # 3 gt (Ambiguous dropped) in 2 videos, 4 proposals, ratio = 2*2/4 = 1: everything kept.
  # At AN 2 (the full lists) all 3 gt are found at tIoU >= 0.5 -> AR = 1.
  assert metrics["ar_at_an"][2] == pytest.approx(1.0)
  assert "AR@AN" in metrics_table.format_metrics_table(metrics)
  path = metrics_table.write_metrics_json(metrics, str(tmp_path / "m" / "ar.json"))
  assert json.loads(open(path).read())["ar_at_an"]["2"] == pytest.approx(1.0)


def test_activitynet_preset_and_bad_arguments(files):
  gt_path, res_path, _ = files
  metrics, reported = evaluate_main.run_evaluation(gt_path, res_path, subset="test",
                                                   dataset="activitynet")
  assert metrics["tiou_thresholds"].size == 10
  np.testing.assert_allclose(reported, [0.5, 0.75, 0.95])
  table = metrics_table.format_metrics_table(metrics, reported_thresholds=reported)
  assert "mAP@0.75" in table and "average mAP (0.5:0.95)" in table
  with pytest.raises(ValueError, match="--tiou_thresholds"):
    evaluate_main.parse_thresholds("0.5,abc")
  with pytest.raises(ValueError, match="protocol"):
    evaluate_main.run_evaluation(gt_path, res_path, protocol="coco")
  scalars = metrics_table.metrics_to_scalars(metrics)
  assert scalars["mAP@0.5"] == pytest.approx(metrics["mAP"][0])


def test_threshold_results_score_their_threshold_only(files):
  gt_path, res_path, tmp_path = files
  # Detections of a per-threshold post-processing for tIoU 0.5: the 0.8 Jump FP removed.
  alt = {"results": {v: [d for d in dets if d["score"] != 0.8]
                     for v, dets in RESULTS["results"].items()}}
  alt_path = tmp_path / "results_tiou0.5.json"
  alt_path.write_text(json.dumps(alt))
  metrics, _ = evaluate_main.run_evaluation(
      gt_path, res_path, subset="test", tiou_thresholds="0.5,0.9",
      threshold_results=evaluate_main.parse_threshold_results(f"0.5={alt_path}"))
  # 0.5 from the alternative file: Jump TP, TP -> AP 1, Run 1 -> 1.0. 0.9 from --results as
  # in the test above: 0.25. Average 0.625.
  np.testing.assert_allclose(metrics["mAP"], [1.0, 0.25], atol=1e-9)
  assert metrics["average_mAP"] == pytest.approx(0.625)
  np.testing.assert_allclose(metrics["per_class_ap"]["Jump"], [1.0, 0.5], atol=1e-9)
  with pytest.raises(ValueError, match="not an evaluated threshold"):
    evaluate_main.run_evaluation(gt_path, res_path, subset="test", tiou_thresholds="0.5,0.9",
                                 threshold_results={0.7: str(alt_path)})
  with pytest.raises(ValueError, match="theta=path"):
    evaluate_main.parse_threshold_results("0.5")
