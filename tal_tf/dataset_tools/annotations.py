"""ActivityNet-style annotation JSON: loading, subset selection and segment cleaning.

Format: {"database": {video_id: {"subset": str, "duration": s, "fps": float (optional),
"annotations": [{"segment": [start_s, end_s], "label": name}, ...],
"labels": [name, ...] (optional video-level labels), "trimmed": bool (optional)}}}.

Video-level labels are the classes of the video's kept segments plus its "labels" list, so
weakly labelled videos (labels, no segments) carry their classes too. A trimmed clip
("trimmed": true, or the converter's --trimmed) is one action from start to end: it gets one
segment [0, duration] per video-level label.
"""

import json
import math
import os

import numpy as np


class AnnotationError(ValueError):
  """The annotation file is not the expected structure."""


def load_database(path):
  """Reads an annotation JSON file -> its "database" dict, checking the structure."""
  if not os.path.isfile(path):
    raise AnnotationError(f"annotation file {path!r} does not exist")
  try:
    with open(path, "r", encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise AnnotationError(f"annotation file {path!r} is not valid JSON: {e}") from None
  if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
    raise AnnotationError(f"annotation file {path!r}: expected a top-level object with a "
                          f"'database' object mapping video ids to entries")
  database = data["database"]
  for video_id, entry in database.items():
    if not isinstance(entry, dict):
      raise AnnotationError(f"{path}: database[{video_id!r}] must be an object, got "
                            f"{type(entry).__name__}")
    annotations = entry.get("annotations", [])
    if not isinstance(annotations, list):
      raise AnnotationError(f"{path}: database[{video_id!r}]['annotations'] must be a list, "
                            f"got {type(annotations).__name__}")
    labels = entry.get("labels", [])
    if (not isinstance(labels, list)
        or not all(isinstance(name, str) and name for name in labels)):
      raise AnnotationError(f"{path}: database[{video_id!r}]['labels'] must be a list of "
                            f"class names, got {labels!r}")
    trimmed = entry.get("trimmed", False)
    if not isinstance(trimmed, bool):
      raise AnnotationError(f"{path}: database[{video_id!r}]['trimmed'] must be true or "
                            f"false, got {trimmed!r}")
  return database


def _subset_names(subset):
  if subset is None:
    return None
  if isinstance(subset, str):
    subset = subset.split(",")
  names = {s.strip().lower() for s in subset if s.strip()}
  return names or None


def select_videos(database, subset=None, path="<annotations>", report=None):
  """Sorted video ids whose 'subset' matches (case-insensitive; comma list; None = all).

  With a subset, a video without a "subset" string cannot be selected: it is counted as
  `subset_missing` in `report` (a QuirkReport), never dropped without a word."""
  wanted = _subset_names(subset)
  if wanted is None:
    return sorted(database)
  unassigned = sorted(v for v, e in database.items() if not isinstance(e.get("subset"), str))
  if report is not None:
    for video_id in unassigned:
      report.add("subset_missing", video_id, f"subset={database[video_id].get('subset')!r}")
  found = sorted({e["subset"] for v, e in database.items() if v not in set(unassigned)})
  chosen = sorted(v for v, e in database.items()
                  if v not in set(unassigned) and e["subset"].lower() in wanted)
  missing = wanted - {s.lower() for s in found}
  if missing:
    raise AnnotationError(f"{path}: subset {sorted(missing)} not found; subsets present: "
                          f"{found}")
  return chosen


def class_names(database, ignore_classes=()):
  """Sorted class names over all videos of the database, minus ignore_classes."""
  ignore = set(ignore_classes)
  names = set()
  for entry in database.values():
    for ann in entry.get("annotations", []):
      label = ann.get("label") if isinstance(ann, dict) else None
      if isinstance(label, str) and label and label not in ignore:
        names.add(label)
    names.update(name for name in entry.get("labels", []) if name not in ignore)
  return sorted(names)


def _positive_float(entry, key):
  """entry[key] as a finite float > 0, or None when missing, non-numeric or not positive."""
  try:
    value = float(entry.get(key))
  except (TypeError, ValueError):
    return None
  if not math.isfinite(value) or value <= 0:
    return None
  return value


def video_duration(entry):
  """The entry's duration in seconds as float, or None when missing or not positive."""
  return _positive_float(entry, "duration")


def video_fps(entry):
  """The entry's frame rate as float, or None when missing or not positive."""
  return _positive_float(entry, "fps")


def clean_segments(video_id, entry, duration, report, ignore_classes=()):
  """Applies the quirk rules to one video's annotations.

  Segments of ignored classes, malformed, zero-length or inverted segments and segments
  entirely outside [0, duration] are dropped; the rest are clipped to [0, duration].
  Every action is counted in `report` (a QuirkReport).
  Returns:
    (segments [G, 2] float64 seconds, label names list of G).
  """
  ignore = set(ignore_classes)
  segments, names = [], []
  for ann in entry.get("annotations", []):
    if not isinstance(ann, dict):
      report.add("segment_malformed", video_id, f"annotation {ann!r} is not an object")
      continue
    label = ann.get("label")
    seg = ann.get("segment")
    if not isinstance(label, str) or not label:
      report.add("segment_malformed", video_id, f"annotation {ann!r} has no label")
      continue
    if label in ignore:
      report.add("segment_ignored_class", video_id, f"{label} {seg}")
      continue
    try:
      start, end = (float(x) for x in seg)
      if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError
    except (TypeError, ValueError):
      report.add("segment_malformed", video_id, f"{label} segment {seg!r}")
      continue
    if end <= start:
      report.add("segment_degenerate", video_id, f"{label} [{start}, {end}]")
      continue
    clipped_start = min(max(start, 0.0), duration)
    clipped_end = min(max(end, 0.0), duration)
    if clipped_end <= clipped_start:
      report.add("segment_outside_video", video_id,
                 f"{label} [{start}, {end}] (video duration {duration})")
      continue
    if (clipped_start, clipped_end) != (start, end):
      report.add("segment_clipped", video_id,
                 f"{label} [{start}, {end}] -> [{clipped_start}, {clipped_end}]")
    segments.append((clipped_start, clipped_end))
    names.append(label)
  segments = np.asarray(segments, np.float64).reshape(-1, 2)
  return segments, names


def video_labels(video_id, entry, segment_names, report, ignore_classes=()):
  """Sorted video-level class names: the kept segments' classes plus the entry's "labels"
  (minus ignored classes, each reported)."""
  ignore = set(ignore_classes)
  names = set(segment_names)
  for name in entry.get("labels", []):
    if name in ignore:
      report.add("label_ignored_class", video_id, name)
    else:
      names.add(name)
  return sorted(names)


def trimmed_segments(video_id, entry, duration, report, ignore_classes=()):
  """A trimmed clip's ground truth: one segment [0, duration] per video-level class (its
  "labels" and its annotations' labels). Annotation segments are replaced (reported).
  Returns (segments [G, 2] float64 seconds, label names list of G)."""
  ignore = set(ignore_classes)
  names = set()
  for ann in entry.get("annotations", []):
    label = ann.get("label") if isinstance(ann, dict) else None
    if not isinstance(label, str) or not label:
      report.add("segment_malformed", video_id, f"annotation {ann!r} has no label")
    elif label in ignore:
      report.add("segment_ignored_class", video_id, label)
    else:
      names.add(label)
      if isinstance(ann, dict) and "segment" in ann:
        report.add("trimmed_segment_replaced", video_id,
                   f"{label} {ann['segment']} -> [0, {duration}]")
  names = video_labels(video_id, entry, names, report, ignore_classes)
  segments = np.asarray([(0.0, float(duration))] * len(names), np.float64).reshape(-1, 2)
  return segments, names
