"""Reading and writing the evaluator's JSON exchange formats (host side, numpy only).

Annotations (DESIGN.md contract)::

  {"database": {video_id: {"subset": str, "duration": seconds, "fps": float (optional),
                           "annotations": [{"segment": [start_s, end_s], "label": name}]}}}

Results (inference output, evaluator input)::

  {"results": {video_id: [{"segment": [start_s, end_s], "label": name, "score": float}]}}

In memory both become ``{video_id: {"segments": float64 [N, 2], "labels": object [N],
...}}``; results also carry ``"scores": float64 [N]`` and annotations ``"duration"`` and
``"subset"``. The protocols (`activitynet_protocol`, `thumos14_protocol`) take these dicts.

Every malformed entry raises `EvaluationFormatError` naming the file, the video, the field
path (e.g. ``annotations[3].segment``), the offending value and what was expected.
"""

import json
import math
import numbers
import os
import re

import numpy as np

# Keys of the per-video dicts the loaders return and the protocols consume.
SEGMENTS = "segments"
LABELS = "labels"
SCORES = "scores"
DURATION = "duration"
SUBSET = "subset"

# THUMOS14 marks hard-to-label stretches with this label; it is never an action class.
AMBIGUOUS_LABEL = "Ambiguous"


class EvaluationFormatError(ValueError):
  """A malformed annotation / results / ambiguous-segment file or in-memory entry."""


def _where(path, video_id=None, field=None):
  """Human-readable location prefix: file 'x', video 'y', field 'z'."""
  parts = [f"file '{path}'"]
  if video_id is not None:
    parts.append(f"video '{video_id}'")
  if field is not None:
    parts.append(f"field '{field}'")
  return ", ".join(parts)


def _fail(path, video_id, field, message):
  raise EvaluationFormatError(f"{_where(path, video_id, field)}: {message}")


def _is_number(x):
  """True for real numbers that are not bools (JSON true/false must not pass as 1/0)."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_segment(value, path, video_id, field):
  """Validates one [start, end] pair; returns it as two floats."""
  if (not isinstance(value, (list, tuple)) or len(value) != 2
      or not all(_is_number(v) for v in value)):
    _fail(path, video_id, field,
          f"expected [start, end] with two numbers (seconds), got {value!r}")
  start, end = float(value[0]), float(value[1])
  if not (math.isfinite(start) and math.isfinite(end)):
    _fail(path, video_id, field, f"expected finite start and end, got {value!r}")
  if end < start:
    _fail(path, video_id, field, f"expected end >= start, got {value!r}")
  return start, end


def _check_label(value, path, video_id, field):
  if not isinstance(value, str) or not value:
    _fail(path, video_id, field, f"expected a non-empty class name string, got {value!r}")
  return value


def _read_json(path, what):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file '{path}' does not exist")
  with open(path, "r", encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise EvaluationFormatError(f"file '{path}': not valid JSON ({e})") from None


def _subset_matches(subset, wanted):
  return wanted is None or (isinstance(subset, str) and subset.lower() == wanted.lower())


def parse_annotations(data, path="<memory>", subset=None):
  """Validates an annotation dict (loaded JSON) -> {video_id: {segments [G,2], labels [G],
  duration, subset}}, keeping only videos whose subset equals `subset` (case-insensitive)."""
  if not isinstance(data, dict) or "database" not in data:
    _fail(path, None, "database",
          'expected a JSON object with a "database" key mapping video ids to entries')
  database = data["database"]
  if not isinstance(database, dict):
    _fail(path, None, "database",
          f"expected an object mapping video ids to entries, got {type(database).__name__}")
  out = {}
  subsets_seen = set()
  for video_id, entry in database.items():
    if not isinstance(entry, dict):
      _fail(path, video_id, None, f"expected an object, got {type(entry).__name__}")
    video_subset = entry.get(SUBSET)
    if subset is not None:
      if SUBSET not in entry:
        _fail(path, video_id, SUBSET,
              f"missing; needed to select subset '{subset}'")
      if not isinstance(video_subset, str):
        _fail(path, video_id, SUBSET, f"expected a string, got {video_subset!r}")
      subsets_seen.add(video_subset)
      if not _subset_matches(video_subset, subset):
        continue
    duration = entry.get(DURATION)
    if duration is not None:
      if not _is_number(duration) or not math.isfinite(duration) or duration < 0:
        _fail(path, video_id, DURATION,
              f"expected a finite non-negative number of seconds, got {duration!r}")
      duration = float(duration)
    if "annotations" not in entry:
      _fail(path, video_id, "annotations",
            "missing; expected a list of {\"segment\": [s, e], \"label\": name} "
            "(use [] for a video without actions)")
    annotations = entry["annotations"]
    if not isinstance(annotations, list):
      _fail(path, video_id, "annotations",
            f"expected a list, got {type(annotations).__name__}")
    segments = np.zeros((len(annotations), 2), np.float64)
    labels = np.empty(len(annotations), dtype=object)
    for i, ann in enumerate(annotations):
      field = f"annotations[{i}]"
      if not isinstance(ann, dict):
        _fail(path, video_id, field, f"expected an object, got {ann!r}")
      for key in ("segment", "label"):
        if key not in ann:
          _fail(path, video_id, f"{field}.{key}", f"missing in {ann!r}")
      segments[i] = _check_segment(ann["segment"], path, video_id, f"{field}.segment")
      labels[i] = _check_label(ann["label"], path, video_id, f"{field}.label")
    out[video_id] = {SEGMENTS: segments, LABELS: labels, DURATION: duration,
                     SUBSET: video_subset}
  if subset is not None and not out and database:
    raise EvaluationFormatError(
        f"file '{path}': no video has subset '{subset}' (case-insensitive); "
        f"subsets present: {sorted(subsets_seen)}")
  return out


def load_annotations(path, subset=None):
  """Loads + validates an annotation JSON -> {video_id: {segments [G,2] float64 seconds,
  labels [G] str, duration, subset}}; `subset` (case-insensitive) filters videos."""
  return parse_annotations(_read_json(path, "annotations"), path=path, subset=subset)


def parse_results(data, path="<memory>", require_labels=True):
  """Validates a results dict (loaded JSON) -> {video_id: {segments [N,2], labels [N],
  scores [N]}}; labels may be absent (None) when `require_labels` is False (proposals)."""
  if not isinstance(data, dict) or "results" not in data:
    _fail(path, None, "results",
          'expected a JSON object with a "results" key mapping video ids to lists')
  results = data["results"]
  if not isinstance(results, dict):
    _fail(path, None, "results",
          f"expected an object mapping video ids to lists, got {type(results).__name__}")
  out = {}
  for video_id, entries in results.items():
    if not isinstance(entries, list):
      _fail(path, video_id, None,
            f"expected a list of detections, got {type(entries).__name__}")
    parsed = _parse_video_results_fast(entries, require_labels)
    if parsed is None:
      # Something is off (or labels are partly missing): the careful per-entry pass either
      # raises an error naming the entry and field or accepts the list.
      parsed = _parse_video_results_checked(entries, require_labels, path, video_id)
    out[video_id] = parsed
  return out


_JSON_NUMBER_TYPES = frozenset((int, float))


def _parse_video_results_fast(entries, require_labels):
  """Vectorized parse of one video's well-formed results list; None if anything is off."""
  try:
    segments = [d["segment"] for d in entries]
    scores = [d["score"] for d in entries]
    labels = [d["label"] for d in entries] if require_labels else [
        d.get("label") for d in entries]
  except (KeyError, TypeError, AttributeError):
    return None
  if not all(type(seg) is list and len(seg) == 2 for seg in segments):
    return None
  if not _JSON_NUMBER_TYPES.issuperset(map(type, scores)):
    return None
  if not _JSON_NUMBER_TYPES.issuperset(map(type, (x for seg in segments for x in seg))):
    return None
  if not all(type(l) is str and l for l in labels):
    if require_labels or any(l is not None for l in labels):
      return None
  seg_arr = np.array(segments, np.float64).reshape(-1, 2)
  score_arr = np.array(scores, np.float64)
  if not (np.all(np.isfinite(seg_arr)) and np.all(np.isfinite(score_arr))
          and np.all(seg_arr[:, 1] >= seg_arr[:, 0])):
    return None
  label_arr = np.empty(len(labels), dtype=object)
  label_arr[:] = labels
  return {SEGMENTS: seg_arr, LABELS: label_arr, SCORES: score_arr}


def _parse_video_results_checked(entries, require_labels, path, video_id):
  """Per-entry parse of one video's results list, raising on the first malformed field."""
  n = len(entries)
  segments = np.zeros((n, 2), np.float64)
  scores = np.zeros(n, np.float64)
  labels = np.empty(n, dtype=object)
  for i, det in enumerate(entries):
    field = f"results[{i}]"
    if not isinstance(det, dict):
      _fail(path, video_id, field, f"expected an object, got {det!r}")
    if "segment" not in det:
      _fail(path, video_id, f"{field}.segment", f"missing in {det!r}")
    if "score" not in det:
      _fail(path, video_id, f"{field}.score", f"missing in {det!r}")
    segments[i] = _check_segment(det["segment"], path, video_id, f"{field}.segment")
    score = det["score"]
    if not _is_number(score) or not math.isfinite(score):
      _fail(path, video_id, f"{field}.score", f"expected a finite number, got {score!r}")
    scores[i] = float(score)
    if "label" in det or require_labels:
      if "label" not in det:
        _fail(path, video_id, f"{field}.label", f"missing in {det!r}")
      labels[i] = _check_label(det["label"], path, video_id, f"{field}.label")
  return {SEGMENTS: segments, LABELS: labels, SCORES: scores}


def load_results(path, require_labels=True):
  """Loads + validates a results JSON -> {video_id: {segments [N,2] float64 seconds,
  labels [N] str, scores [N] float64}}."""
  return parse_results(_read_json(path, "results"), path=path, require_labels=require_labels)


def results_to_json(results_by_video):
  """{video_id: {segments [N,2], labels [N], scores [N]}} -> the results JSON object
  (validated: finite values, end >= start, non-empty string labels or None)."""
  out = {}
  for video_id, det in results_by_video.items():
    where = f"results for video '{video_id}'"
    segments = np.asarray(det[SEGMENTS], np.float64)
    segments = segments.reshape(0, 2) if segments.size == 0 else segments
    scores = np.asarray(det[SCORES], np.float64).reshape(-1)
    labels = det.get(LABELS)
    labels = [None] * len(scores) if labels is None else list(labels)
    if segments.ndim != 2 or segments.shape[1] != 2:
      raise EvaluationFormatError(f"{where}: field '{SEGMENTS}' must have shape [N, 2], "
                                  f"got {segments.shape}")
    if not len(segments) == len(scores) == len(labels):
      raise EvaluationFormatError(
          f"{where}: segments ({len(segments)}), scores ({len(scores)}) and labels "
          f"({len(labels)}) must have the same length")
    if not np.all(np.isfinite(segments)) or np.any(segments[:, 1] < segments[:, 0]):
      bad = int(np.flatnonzero(~np.isfinite(segments).all(1)
                               | (segments[:, 1] < segments[:, 0]))[0])
      raise EvaluationFormatError(f"{where}: field '{SEGMENTS}'[{bad}] = "
                                  f"{segments[bad].tolist()}, expected finite with end >= start")
    if not np.all(np.isfinite(scores)):
      bad = int(np.flatnonzero(~np.isfinite(scores))[0])
      raise EvaluationFormatError(f"{where}: field '{SCORES}'[{bad}] = {scores[bad]}, "
                                  "expected a finite number")
    labels = [l if (l is None or isinstance(l, str)) else str(l) for l in labels]
    if any(l == "" for l in labels):
      raise EvaluationFormatError(f"{where}: field '{LABELS}' has an empty label")
    seg_list, score_list = segments.tolist(), scores.tolist()
    out[str(video_id)] = [
        {"segment": seg, "label": label, "score": score} if label is not None
        else {"segment": seg, "score": score}
        for seg, label, score in zip(seg_list, labels, score_list)]
  return {"version": "tal_tf", "results": out, "external_data": {}}


def write_results(path, results_by_video):
  """Writes {video_id: {segments [N,2], labels [N], scores [N]}} as a results JSON file."""
  data = results_to_json(results_by_video)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(json.dumps(data))
  return path


def split_ambiguous(gt_by_video, ambiguous_label=AMBIGUOUS_LABEL):
  """Separates 'Ambiguous' ground truth (case-insensitive label) -> (gt_by_video without
  it, {video_id: float64 [A,2]} ambiguous segments)."""
  wanted = ambiguous_label.lower()
  clean, ambiguous = {}, {}
  for video_id, entry in gt_by_video.items():
    labels = np.asarray(entry[LABELS], dtype=object)
    segments = np.asarray(entry[SEGMENTS], np.float64).reshape(-1, 2)
    is_amb = np.array([isinstance(l, str) and l.lower() == wanted for l in labels], bool)
    new_entry = dict(entry)
    new_entry[SEGMENTS] = segments[~is_amb]
    new_entry[LABELS] = labels[~is_amb]
    clean[video_id] = new_entry
    if is_amb.any():
      ambiguous[video_id] = segments[is_amb]
  return clean, ambiguous


_SUBSET_TO_TXT = {"test": "test", "testing": "test", "validation": "val", "val": "val"}


def _parse_segment_txt(path):
  """Reads 'video_id start end' lines (THUMOS14 per-class list) -> {video_id: [A,2]}."""
  out = {}
  with open(path, "r", encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      parts = line.split()
      if not parts:
        continue
      field = f"line {line_no}"
      if len(parts) != 3:
        _fail(path, None, field,
              f"expected 'video_id start end', got {line.rstrip()!r}")
      video_id = parts[0]
      try:
        values = [float(parts[1]), float(parts[2])]
      except ValueError:
        _fail(path, video_id, field, f"expected numeric start and end, got {line.rstrip()!r}")
      start, end = _check_segment(values, path, video_id, field)
      out.setdefault(video_id, []).append((start, end))
  return {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in out.items()}


def load_ambiguous_segments(path, subset=None, ambiguous_label=AMBIGUOUS_LABEL):
  """Ambiguous segments -> {video_id: float64 [A,2]} from a THUMOS14 annotation directory
  (Ambiguous_test.txt / Ambiguous_val.txt chosen by `subset`), one such .txt file, or an
  annotation JSON whose 'Ambiguous'-labelled segments are taken."""
  if os.path.isdir(path):
    candidates = sorted(n for n in os.listdir(path)
                        if re.fullmatch(rf"{re.escape(ambiguous_label)}_\w+\.txt", n,
                                        flags=re.IGNORECASE))
    chosen = None
    if subset is not None:
      suffix = _SUBSET_TO_TXT.get(subset.lower(), subset.lower())
      for name in candidates:
        if name.lower() == f"{ambiguous_label.lower()}_{suffix}.txt":
          chosen = name
    elif len(candidates) == 1:
      chosen = candidates[0]
    if chosen is None:
      raise FileNotFoundError(
          f"ambiguous annotations directory '{path}': no {ambiguous_label}_<subset>.txt "
          f"for subset {subset!r}; found {candidates}")
    return _parse_segment_txt(os.path.join(path, chosen))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"ambiguous annotations '{path}' does not exist")
  if path.lower().endswith(".json"):
    gt = load_annotations(path, subset=subset)
    return split_ambiguous(gt, ambiguous_label)[1]
  return _parse_segment_txt(path)


def flatten_by_video(by_video, video_index, with_scores, what="entries"):
  """{video_id: {segments, labels[, scores]}} -> (video idx int64 [N], segments [N,2],
  labels object [N], scores [N] or None), in dict order then list order; unseen video
  ids are appended to `video_index` (a dict id -> index) in order of appearance."""
  vids, segs, labels, scores = [], [], [], []
  for video_id, entry in by_video.items():
    seg = np.asarray(entry[SEGMENTS], np.float64)
    if seg.size == 0:
      seg = seg.reshape(0, 2)
    if seg.ndim != 2 or seg.shape[1] != 2:
      raise EvaluationFormatError(
          f"{what} of video '{video_id}': field '{SEGMENTS}' must have shape [N, 2], "
          f"got {seg.shape}")
    n = seg.shape[0]
    lab = entry.get(LABELS)
    lab = np.full(n, None, dtype=object) if lab is None else np.asarray(lab, dtype=object)
    if lab.shape != (n,):
      raise EvaluationFormatError(
          f"{what} of video '{video_id}': field '{LABELS}' must have shape [{n}], "
          f"got {lab.shape}")
    if with_scores:
      sc = np.asarray(entry[SCORES], np.float64).reshape(-1)
      if sc.shape != (n,):
        raise EvaluationFormatError(
            f"{what} of video '{video_id}': field '{SCORES}' must have shape [{n}], "
            f"got {sc.shape}")
      scores.append(sc)
    if video_id not in video_index:
      video_index[video_id] = len(video_index)
    vids.append(np.full(n, video_index[video_id], np.int64))
    segs.append(seg)
    labels.append(lab)
  if not vids:
    return (np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0, object),
            np.zeros(0) if with_scores else None)
  return (np.concatenate(vids), np.concatenate(segs), np.concatenate(labels),
          np.concatenate(scores) if with_scores else None)
