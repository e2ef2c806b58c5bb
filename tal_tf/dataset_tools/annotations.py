"""ActivityNet-style annotation JSON: the one parser, for the converter and the evaluator.

Format: {"database": {video_id: {"subset": str, "duration": s, "fps": float (optional),
"annotations": [{"segment": [start_s, end_s], "label": name}, ...],
"labels": [name, ...] (optional video-level labels), "trimmed": bool (optional)}}}.

Both users share reading, the structure checks, subset selection and the segment / label
checks; they differ in policy. The converter is lenient with real-data quirks
(`clean_segments`: clip, drop and report each in a quirks.QuirkReport); the evaluator is
strict (`load_annotations`: every malformed entry raises). Every error names the file, the
video, the field path (e.g. ``annotations[3].segment``), the value and what was expected.

Video-level labels are the classes of the video's kept segments plus its "labels" list, so
weakly labelled videos (labels, no segments) carry their classes too. A trimmed clip
("trimmed": true, or the converter's --trimmed) is one action from start to end: it gets one
segment [0, duration] per video-level label.
"""

import json
import math
import numbers
import os

import numpy as np

# Keys of the per-video dicts `load_annotations` returns (and the protocols consume).
SEGMENTS = "segments"
LABELS = "labels"
SCORES = "scores"
DURATION = "duration"
SUBSET = "subset"


class AnnotationError(ValueError):
  """A malformed annotation (or results) file or entry; the message says where and why."""


class MissingFileError(AnnotationError, FileNotFoundError):
  """An input file that does not exist."""


def where(path, video_id=None, field=None):
  """Human-readable location prefix: file 'x', video 'y', field 'z'."""
  parts = [f"file '{path}'"]
  if video_id is not None:
    parts.append(f"video '{video_id}'")
  if field is not None:
    parts.append(f"field '{field}'")
  return ", ".join(parts)


def fail(path, video_id, field, message):
  """Raises AnnotationError located at file / video / field."""
  raise AnnotationError(f"{where(path, video_id, field)}: {message}")


def is_number(x):
  """True for real numbers that are not bools (JSON true/false must not pass as 1/0)."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_segment(value, path, video_id, field):
  """Validates one [start, end] pair (finite, end >= start); returns it as two floats."""
  if (not isinstance(value, (list, tuple)) or len(value) != 2
      or not all(is_number(v) for v in value)):
    fail(path, video_id, field,
         f"expected [start, end] with two numbers (seconds), got {value!r}")
  start, end = float(value[0]), float(value[1])
  if not (math.isfinite(start) and math.isfinite(end)):
    fail(path, video_id, field, f"expected finite start and end, got {value!r}")
  if end < start:
    fail(path, video_id, field, f"expected end >= start, got {value!r}")
  return start, end


def check_label(value, path, video_id, field):
  """Validates a class name (non-empty string)."""
  if not isinstance(value, str) or not value:
    fail(path, video_id, field, f"expected a non-empty class name string, got {value!r}")
  return value


class _DuplicateKeyError(ValueError):
  """A key repeated inside one JSON object (raised by the object hook, reported by read_json)."""


def _unique_keys(pairs):
  """json object_pairs_hook: a dict, refusing a key given twice. Python's json keeps only the
  last value of a repeated key, so a results file listing a video twice would silently lose
  the first list of detections (and an annotation file a video's first entry)."""
  out = {}
  for key, value in pairs:
    if key in out:
      raise _DuplicateKeyError(key)
    out[key] = value
  return out


def read_json(path, what="annotations"):
  """Loads a JSON file; MissingFileError / AnnotationError name the file. A key repeated in
  one object (e.g. a video id listed twice) is an error, not a silent overwrite."""
  if not os.path.isfile(path):
    raise MissingFileError(f"{what} file '{path}' does not exist")
  with open(path, "r", encoding="utf-8") as f:
    try:
      return json.load(f, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"file '{path}': not valid JSON ({e})") from None
    except _DuplicateKeyError as e:
      raise AnnotationError(
          f"file '{path}': key {e.args[0]!r} appears twice in one JSON object (JSON readers "
          "keep only the last value); merge the two entries") from None


def check_database(data, path="<memory>", require_annotations=False):
  """Checks the structure of a loaded annotation JSON -> its "database" dict.

  Every entry must be an object; "annotations" a list (required when
  `require_annotations`, else missing means none), "labels" a list of class names,
  "trimmed" a bool."""
  if not isinstance(data, dict) or "database" not in data:
    fail(path, None, "database",
         'expected a JSON object with a "database" key mapping video ids to entries')
  database = data["database"]
  if not isinstance(database, dict):
    fail(path, None, "database",
         f"expected an object mapping video ids to entries, got {type(database).__name__}")
  for video_id, entry in database.items():
    if not isinstance(entry, dict):
      fail(path, video_id, None, f"expected an object, got {type(entry).__name__}")
    if require_annotations and "annotations" not in entry:
      fail(path, video_id, "annotations",
           "missing; expected a list of {\"segment\": [s, e], \"label\": name} "
           "(use [] for a video without actions)")
    annotations = entry.get("annotations", [])
    if not isinstance(annotations, list):
      fail(path, video_id, "annotations", f"expected a list, got {type(annotations).__name__}")
    labels = entry.get("labels", [])
    if (not isinstance(labels, list)
        or not all(isinstance(name, str) and name for name in labels)):
      fail(path, video_id, "labels", f"expected a list of class names, got {labels!r}")
    trimmed = entry.get("trimmed", False)
    if not isinstance(trimmed, bool):
      fail(path, video_id, "trimmed", f"expected true or false, got {trimmed!r}")
  return database


def load_database(path, require_annotations=False):
  """Reads an annotation JSON file -> its checked "database" dict."""
  return check_database(read_json(path), path, require_annotations)


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
  `subset_missing` in `report` (a QuirkReport), never dropped without a word; without a
  report it is an error."""
  wanted = _subset_names(subset)
  if wanted is None:
    return sorted(database)
  unassigned = sorted(v for v, e in database.items() if not isinstance(e.get("subset"), str))
  for video_id in unassigned:
    if report is None:
      fail(path, video_id, SUBSET, f"missing or not a string ({database[video_id].get(SUBSET)!r})"
           f"; needed to select subset {subset!r}")
    report.add("subset_missing", video_id, f"subset={database[video_id].get(SUBSET)!r}")
  found = sorted({e["subset"] for v, e in database.items() if v not in set(unassigned)})
  chosen = sorted(v for v, e in database.items()
                  if v not in set(unassigned) and e["subset"].lower() in wanted)
  missing = wanted - {s.lower() for s in found}
  if missing:
    raise AnnotationError(f"{where(path)}: subset {sorted(missing)} not found "
                          f"(case-insensitive); subsets present: {found}")
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


def parse_annotations(data, path="<memory>", subset=None):
  """Strictly validates a loaded annotation JSON -> {video_id: {segments float64 [G, 2]
  seconds, labels object [G], duration (float or None), subset}} of the videos whose subset
  equals `subset` (case-insensitive; None = all). Any malformed entry raises."""
  database = check_database(data, path, require_annotations=True)
  out = {}
  for video_id in select_videos(database, subset, path):
    entry = database[video_id]
    duration = entry.get(DURATION)
    if duration is not None:
      if not is_number(duration) or not math.isfinite(duration) or duration < 0:
        fail(path, video_id, DURATION,
             f"expected a finite non-negative number of seconds, got {duration!r}")
      duration = float(duration)
    annotations = entry["annotations"]
    segments = np.zeros((len(annotations), 2), np.float64)
    labels = np.empty(len(annotations), dtype=object)
    for i, ann in enumerate(annotations):
      field = f"annotations[{i}]"
      if not isinstance(ann, dict):
        fail(path, video_id, field, f"expected an object, got {ann!r}")
      for key in ("segment", "label"):
        if key not in ann:
          fail(path, video_id, f"{field}.{key}", f"missing in {ann!r}")
      segments[i] = check_segment(ann["segment"], path, video_id, f"{field}.segment")
      labels[i] = check_label(ann["label"], path, video_id, f"{field}.label")
    out[video_id] = {SEGMENTS: segments, LABELS: labels, DURATION: duration,
                     SUBSET: entry.get(SUBSET)}
  return out


def load_annotations(path, subset=None):
  """Loads + strictly validates an annotation JSON -> {video_id: {segments [G,2] float64
  seconds, labels [G] str, duration, subset}}; `subset` (case-insensitive) filters videos."""
  return parse_annotations(read_json(path), path=path, subset=subset)

