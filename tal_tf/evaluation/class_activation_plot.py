"""Per-step class activation curves with the ground truth shaded, as a TensorBoard image.

For models that output per-step class scores (WTAL's `step_class_scores` [B, T, C] and
`video_class_scores` [B, C]): one panel per video, time in seconds on the x axis, one curve
per drawn class, its ground-truth segments shaded in the same colour, and the localization
threshold as a dashed line. Drawn like `visualization.py` (Figure + Agg canvas, no pyplot).

Use during evaluation (numpy, host side):

  videos = activation_videos_from_batch(batch, detections, class_names, limit=4)
  image = plot_class_activation_curves(videos, threshold=0.5)
  tf.summary.image("class_activations", image[None], step=step)
"""

from matplotlib import colormaps
from matplotlib.figure import Figure
import numpy as np

from tal_tf.core.standard_fields import InputFields
from tal_tf.evaluation import visualization

STEP_CLASS_SCORES = "step_class_scores"
VIDEO_CLASS_SCORES = "video_class_scores"


def _decode(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def activation_videos_from_batch(batch, detections, class_names, limit):
  """Per-video dicts for `plot_class_activation_curves` from one evaluated batch.

  batch: numpy input batch (InputFields keys: video_id, num_steps, feature_fps,
  groundtruth_segments_seconds, groundtruth_labels, num_groundtruth_segments);
  detections: numpy postprocess outputs with step_class_scores [B, T, C] (and optionally
  video_class_scores [B, C]); class_names: {label id: name}; limit: at most this many videos.
  Returns a list of {video_id, step_scores [n, C], feature_fps, segments [G, 2] seconds,
  labels [G] names, video_scores [C] or None}.
  """
  if STEP_CLASS_SCORES not in detections:
    raise KeyError(f"detections lack {STEP_CLASS_SCORES!r}: the model does not output "
                   f"per-step class scores; got {sorted(detections)}")
  videos = []
  for b in range(min(int(limit), len(batch[InputFields.video_id]))):
    n = int(batch[InputFields.num_steps][b])
    g = int(batch[InputFields.num_segments][b])
    video_scores = detections.get(VIDEO_CLASS_SCORES)
    videos.append({
        "video_id": _decode(batch[InputFields.video_id][b]),
        "step_scores": np.asarray(detections[STEP_CLASS_SCORES][b][:n], np.float64),
        "feature_fps": float(batch[InputFields.feature_fps][b]),
        "segments": np.asarray(batch[InputFields.segments_seconds][b][:g], np.float64),
        "labels": [class_names[int(i)] for i in batch[InputFields.labels][b][:g]],
        "video_scores": (None if video_scores is None
                         else np.asarray(video_scores[b], np.float64)),
    })
  return videos


def curve_colors(class_names):
  """{class name: RGBA}: tab10 (saturated colours, readable as thin curves), cycled."""
  cmap = colormaps["tab10"]
  return {c: cmap(i % 10) for i, c in enumerate(class_names)}


def classes_to_draw(video, class_names, max_classes=3):
  """Column indices to draw: the ground-truth classes, then the best video scores."""
  names = list(class_names)
  chosen = []
  for label in video["labels"]:
    if label in names and names.index(label) not in chosen:
      chosen.append(names.index(label))
  scores = video.get("video_scores")
  if scores is None:
    scores = (video["step_scores"].max(axis=0) if len(video["step_scores"])
              else np.zeros(len(names)))
  for c in np.argsort(-np.asarray(scores), kind="mergesort"):
    if len(chosen) >= max(max_classes, 1):
      break
    if int(c) not in chosen:
      chosen.append(int(c))
  return chosen


def plot_class_activation_curves(videos, class_names, threshold=0.5, max_classes=3):
  """Curves y_t^c over time with ground truth shaded, one panel per video -> uint8 [H, W, 3].

  videos: dicts as returned by `activation_videos_from_batch`; class_names: the C names in
  column order (column c = label id c + 1); threshold: drawn as a dashed line.
  """
  videos = list(videos)
  if not videos:
    raise ValueError("videos: expected at least one video to draw")
  class_names = [str(c) for c in class_names]
  colors = curve_colors(class_names)
  fig = Figure(figsize=(10.0, 1.8 * len(videos) + 0.4), dpi=80)
  for i, video in enumerate(videos):
    ax = fig.add_subplot(len(videos), 1, i + 1)
    scores = np.asarray(video["step_scores"], np.float64).reshape(-1, len(class_names))
    fps = float(video["feature_fps"])
    duration = max(len(scores) / fps, 1.0 / fps)
    drawn = classes_to_draw(video, class_names, max_classes)
    for c in drawn:
      name = class_names[c]
      color = colors[name]
      for (start, end), label in zip(video["segments"], video["labels"]):
        if label == name:
          ax.axvspan(start, end, color=color, alpha=0.25, linewidth=0)
      if len(scores):
        # Step t covers [t, t + 1) / fps: a step plot shows exactly what is thresholded.
        times = np.arange(len(scores) + 1) / fps
        values = np.append(scores[:, c], scores[-1, c])
        suffix = ""
        if video.get("video_scores") is not None:
          suffix = f" (video {video['video_scores'][c]:.2f})"
        ax.step(times, values, where="post", color=color, linewidth=1.2,
                label=name + suffix)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(0.0, duration)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("y", fontsize=7)
    ax.set_title(f"{video['video_id']} (shaded: ground truth)", fontsize=8, loc="left")
    ax.tick_params(labelsize=7)
    if drawn and len(scores):
      ax.legend(fontsize=6, loc="upper right", frameon=False)
  fig.axes[-1].set_xlabel("time (s)", fontsize=8)
  fig.tight_layout()
  return visualization.figure_to_image(fig)
