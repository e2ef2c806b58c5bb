"""Times the host-side evaluator on a THUMOS14-sized random problem and prints seconds.

213 videos x 1000 detections x 7 tIoU thresholds (seeded). Ground truth looks like THUMOS14
test: 1-2 classes per video, ~16 segments of 1-20 s; half the detections are jittered copies
of ground truth (so matching has real work to do), half are random; scores are rounded to
create ties. Run: `python bench/bench_evaluator.py [--videos 213 --detections 1000]`.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_tf.evaluation import activitynet_protocol  # pylint: disable=g-import-not-at-top
from tal_tf.evaluation import io as eval_io  # pylint: disable=g-import-not-at-top
from tal_tf.evaluation import thumos14_protocol  # pylint: disable=g-import-not-at-top


def make_problem(num_videos, num_detections, num_classes=20, seed=0):
  """Random ({video: gt}, {video: results}) dicts of the sizes above."""
  rng = np.random.default_rng(seed)
  classes = [f"class_{i:02d}" for i in range(num_classes)]
  gt, results = {}, {}
  for v in range(num_videos):
    vid = f"video_test_{v:07d}"
    duration = rng.uniform(30.0, 600.0)
    video_classes = rng.choice(num_classes, size=rng.integers(1, 3), replace=False)
    g = max(1, rng.poisson(16))
    starts = rng.uniform(0, duration - 20, g)
    seg = np.stack([starts, starts + rng.uniform(1, 20, g)], 1)
    labels = np.array([classes[c] for c in rng.choice(video_classes, g)], object)
    gt[vid] = {"segments": seg, "labels": labels, "duration": duration, "subset": "test"}
    n_near = num_detections // 2
    src = rng.integers(0, g, n_near)
    near = seg[src] + rng.normal(0, 2.0, (n_near, 2))
    near.sort(axis=1)
    r_starts = rng.uniform(0, duration - 20, num_detections - n_near)
    rand = np.stack([r_starts, r_starts + rng.uniform(0.5, 30, r_starts.size)], 1)
    det_seg = np.concatenate([near, rand])
    det_lab = np.concatenate([
        labels[src],
        np.array([classes[c] for c in rng.integers(0, num_classes, rand.shape[0])], object)])
    scores = np.round(rng.uniform(0, 1, num_detections), 3)   # ties on purpose
    results[vid] = {"segments": det_seg, "labels": det_lab, "scores": scores}
  return gt, results


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--videos", type=int, default=213)
  parser.add_argument("--detections", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  gt, results = make_problem(args.videos, args.detections, seed=args.seed)
  thresholds = activitynet_protocol.THUMOS14_TIOU_THRESHOLDS

  timings = {}
  t0 = time.perf_counter()
  det = activitynet_protocol.mean_average_precision(gt, results, thresholds)
  timings["activitynet mAP"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  th = thumos14_protocol.thumos14_mean_average_precision(gt, results, thresholds)
  timings["thumos14 mAP"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  ar = activitynet_protocol.average_recall_metrics(gt, results)
  timings["AR@AN (11 tIoU)"] = time.perf_counter() - t0

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "results.json")
    t0 = time.perf_counter()
    eval_io.write_results(path, results)
    timings["write results JSON"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = eval_io.load_results(path)
    timings["load results JSON"] = time.perf_counter() - t0
  del loaded

  print(f"{args.videos} videos x {args.detections} detections x {thresholds.size} thresholds")
  for name, seconds in timings.items():
    print(f"  {name:<22s} {seconds:7.3f} s")
  print(f"  {'total':<22s} {sum(timings.values()):7.3f} s")
  print(f"activitynet mAP per tIoU: {np.round(det['mAP'], 4).tolist()}")
  print(f"thumos14    mAP per tIoU: {np.round(th['mAP'], 4).tolist()}")
  print(f"AR@100: {ar['ar_at_an'][100]:.4f}")


if __name__ == "__main__":
  main()
