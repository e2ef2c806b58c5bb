"""Evaluation figures as uint8 RGB images [H, W, 3] for TensorBoard (matplotlib, Agg).

Figures are drawn on `matplotlib.figure.Figure` + the Agg canvas directly (no pyplot global
state, safe in background threads and without a display). TensorFlow is imported only by
`write_image_summaries`.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib import colormaps

from tal_tf.evaluation import io as eval_io


def figure_to_image(fig):
  """Renders a matplotlib Figure -> uint8 [H, W, 3] RGB."""
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  rgba = np.asarray(canvas.buffer_rgba())
  return np.ascontiguousarray(rgba[:, :, :3], dtype=np.uint8)


def _class_colors(class_names):
  """{class name: RGBA} from a qualitative colormap (cycled beyond 20 classes)."""
  cmap = colormaps["tab20"]
  return {c: cmap(i % 20) for i, c in enumerate(class_names)}


def plot_per_class_ap(class_names, ap, title="Per-class AP", tiou_threshold=None):
  """Horizontal bar chart of AP per class (ap [C], values in [0, 1]) -> uint8 [H, W, 3]."""
  class_names = [str(c) for c in class_names]
  ap = np.asarray(ap, np.float64).reshape(-1)
  if ap.shape[0] != len(class_names):
    raise ValueError(f"ap: expected {len(class_names)} values (one per class), got {ap.shape}")
  height = max(2.5, 0.28 * len(class_names) + 1.2)
  fig = Figure(figsize=(7.0, height), dpi=80)
  ax = fig.add_subplot(1, 1, 1)
  y = np.arange(len(class_names))
  ax.barh(y, np.nan_to_num(ap), color="tab:blue")
  ax.set_yticks(y)
  ax.set_yticklabels(class_names, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0.0, 1.0)
  ax.set_xlabel("AP")
  mean = float(np.nanmean(ap)) if ap.size else 0.0
  ax.axvline(mean, color="tab:red", linestyle="--", linewidth=1)
  suffix = f" @ tIoU {tiou_threshold:g}" if tiou_threshold is not None else ""
  ax.set_title(f"{title}{suffix} (mean {mean:.3f})", fontsize=10)
  fig.tight_layout()
  return figure_to_image(fig)


def plot_recall_vs_num_proposals(avg_nr_proposals, average_recall, recall=None,
                                 tiou_thresholds=None, title="AR vs AN"):
  """AR-AN curve: average_recall [K] vs avg_nr_proposals [K] (optionally recall [T, K] per
  tIoU threshold as thin lines) -> uint8 [H, W, 3]."""
  x = np.asarray(avg_nr_proposals, np.float64).reshape(-1)
  y = np.asarray(average_recall, np.float64).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f"avg_nr_proposals {x.shape} and average_recall {y.shape} must match")
  fig = Figure(figsize=(6.0, 4.5), dpi=80)
  ax = fig.add_subplot(1, 1, 1)
  if recall is not None:
    recall = np.asarray(recall, np.float64)
    cmap = colormaps["viridis"]
    for i, row in enumerate(recall):
      label = (f"tIoU {float(tiou_thresholds[i]):.2f}" if tiou_thresholds is not None
               else None)
      ax.plot(x, row, linewidth=0.8, color=cmap(i / max(1, len(recall) - 1)), label=label)
  ax.plot(x, y, linewidth=2.5, color="tab:red", label="average recall")
  ax.set_xlabel("average number of proposals per video")
  ax.set_ylabel("recall")
  ax.set_ylim(0.0, 1.0)
  ax.set_xlim(0.0, max(1.0, float(x.max()) if x.size else 1.0))
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=6, loc="lower right", ncol=2)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return figure_to_image(fig)


def plot_detection_timelines(gt_by_video, results_by_video, video_ids, top_k=10,
                             class_names=None, durations=None):
  """Per video two rows: ground-truth segments, then its top_k detections (coloured by class,
  labelled with scores) -> uint8 [H, W, 3]. Inputs are the evaluator's per-video dicts."""
  video_ids = list(video_ids)
  if not video_ids:
    raise ValueError("video_ids: expected at least one video to draw")
  labels = set()
  for v in video_ids:
    for src in (gt_by_video.get(v), results_by_video.get(v)):
      if src is not None and src.get(eval_io.LABELS) is not None:
        labels.update(str(l) for l in src[eval_io.LABELS] if l is not None)
  if class_names is None:
    class_names = sorted(labels)
  colors = _class_colors([str(c) for c in class_names])
  fallback = (0.5, 0.5, 0.5, 1.0)
  fig = Figure(figsize=(10.0, 1.5 * len(video_ids) + 0.6), dpi=80)
  axes = [fig.add_subplot(len(video_ids), 1, i + 1) for i in range(len(video_ids))]
  used = set()
  for ax, v in zip(axes, video_ids):
    gt = gt_by_video.get(v, {})
    det = results_by_video.get(v, {})
    g_seg = np.asarray(gt.get(eval_io.SEGMENTS, np.zeros((0, 2))), np.float64).reshape(-1, 2)
    g_lab = list(gt.get(eval_io.LABELS, [None] * len(g_seg)))
    d_seg = np.asarray(det.get(eval_io.SEGMENTS, np.zeros((0, 2))), np.float64).reshape(-1, 2)
    d_score = np.asarray(det.get(eval_io.SCORES, np.zeros(len(d_seg))), np.float64)
    d_lab = det.get(eval_io.LABELS)
    d_lab = [None] * len(d_seg) if d_lab is None else list(d_lab)
    order = np.argsort(-d_score, kind="mergesort")[:top_k]
    duration = None
    if durations is not None:
      duration = durations.get(v)
    if duration is None:
      duration = gt.get(eval_io.DURATION)
    if duration is None:
      ends = [g_seg[:, 1].max() if len(g_seg) else 0.0,
              d_seg[order, 1].max() if len(order) else 0.0]
      duration = max(max(ends), 1.0)
    for (s, e), lab in zip(g_seg, g_lab):
      color = colors.get(str(lab), fallback)
      used.add(str(lab))
      ax.broken_barh([(s, max(e - s, 1e-3))], (1.1, 0.8), facecolors=color,
                     edgecolor="black", linewidth=0.5)
    # Detections stacked in a few lanes so overlapping ones stay readable.
    lanes = max(1, min(4, len(order)))
    for rank, i in enumerate(order):
      s, e = d_seg[i]
      lab = d_lab[i]
      color = colors.get(str(lab), fallback)
      used.add(str(lab))
      lane = rank % lanes
      y0 = 0.05 + lane * (0.9 / lanes)
      ax.broken_barh([(s, max(e - s, 1e-3))], (y0, 0.9 / lanes * 0.9), facecolors=color,
                     edgecolor="black", linewidth=0.5, alpha=0.85)
      ax.text(min(s, duration), y0 + 0.45 / lanes, f"{d_score[i]:.2f}", fontsize=6,
              va="center", ha="left", clip_on=True)
    ax.set_xlim(0.0, float(duration))
    ax.set_ylim(0.0, 2.0)
    ax.set_yticks([0.5, 1.5])
    ax.set_yticklabels([f"top-{top_k}", "ground truth"], fontsize=7)
    ax.set_title(str(v), fontsize=8, loc="left")
    ax.tick_params(axis="x", labelsize=7)
  axes[-1].set_xlabel("time (s)", fontsize=8)
  handles = [_legend_patch(colors.get(c, fallback)) for c in sorted(used) if c != "None"]
  names = [c for c in sorted(used) if c != "None"]
  if handles:
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=6,
               frameon=False)
  fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
  return figure_to_image(fig)


def _legend_patch(color):
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  return Patch(facecolor=color, edgecolor="black")


def evaluation_images(metrics, gt_by_video=None, results_by_video=None, video_ids=(),
                      top_k=10, tiou_index=None):
  """{name: uint8 [H,W,3]} of the figures a metrics dict supports: per-class AP (at
  tiou_index, default the middle threshold), AR-AN curve, detection timelines."""
  images = {}
  detection = metrics.get("detection", metrics if "mAP" in metrics else None)
  proposals = metrics.get("proposals", metrics if "ar_at_an" in metrics else None)
  if detection is not None and len(detection["class_names"]):
    thr = np.asarray(detection["tiou_thresholds"])
    t = thr.size // 2 if tiou_index is None else tiou_index
    images["per_class_ap"] = plot_per_class_ap(detection["class_names"],
                                               np.asarray(detection["ap"])[t],
                                               tiou_threshold=float(thr[t]))
  if proposals is not None:
    images["recall_vs_num_proposals"] = plot_recall_vs_num_proposals(
        proposals["avg_nr_proposals"], proposals["average_recall"], proposals["recall"],
        proposals["tiou_thresholds"])
  if gt_by_video is not None and results_by_video is not None and len(video_ids):
    images["detection_timelines"] = plot_detection_timelines(
        gt_by_video, results_by_video, video_ids, top_k=top_k)
  return images


def write_image_summaries(images, step, prefix="eval/"):
  """Writes {name: uint8 [H,W,3]} as tf.summary images at `step` to the default writer."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only this helper needs TF)
  for name, image in images.items():
    image = np.asarray(image, np.uint8)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"images['{name}']: expected [H, W, 3] uint8, got {image.shape}")
    tf.summary.image(prefix + name, image[None], step=step)
