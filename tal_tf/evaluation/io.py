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
import os
import re

import numpy as np

from tal_tf.dataset_tools import annotations as annotations_lib
from tal_tf.utils import atomic_files

# Keys of the per-video dicts the loaders return and the protocols consume.
SEGMENTS = annotations_lib.SEGMENTS
LABELS = annotations_lib.LABELS
SCORES = annotations_lib.SCORES
DURATION = annotations_lib.DURATION
SUBSET = annotations_lib.SUBSET

# THUMOS14 marks hard-to-label stretches with this label; it is never an action class.
AMBIGUOUS_LABEL = "Ambiguous"

# One error type for annotation and results files (the message names file, video, field).
EvaluationFormatError = annotations_lib.AnnotationError

# The annotation parser is shared with the converter (tal_tf/dataset_tools/annotations.py).
parse_annotations = annotations_lib.parse_annotations
load_annotations = annotations_lib.load_annotations
read_json = annotations_lib.read_json

def parse_results(data, path="<memory>", require_labels=True):
  """Validates a results dict (loaded JSON) -> {video_id: {segments [N,2], labels [N],
  scores [N]}}; labels may be absent (None) when `require_labels` is False (proposals)."""
  if not isinstance(data, dict) or "results" not in data:
    annotations_lib.fail(path, None, "results",
          'expected a JSON object with a "results" key mapping video ids to lists')
  results = data["results"]
  if not isinstance(results, dict):
    annotations_lib.fail(path, None, "results",
          f"expected an object mapping video ids to lists, got {type(results).__name__}")
  out = {}
  for video_id, entries in results.items():
    if not isinstance(entries, list):
      annotations_lib.fail(path, video_id, None,
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
      annotations_lib.fail(path, video_id, field, f"expected an object, got {det!r}")
    if "segment" not in det:
      annotations_lib.fail(path, video_id, f"{field}.segment", f"missing in {det!r}")
    if "score" not in det:
      annotations_lib.fail(path, video_id, f"{field}.score", f"missing in {det!r}")
    segments[i] = annotations_lib.check_segment(det["segment"], path, video_id, f"{field}.segment")
    score = det["score"]
    if not annotations_lib.is_number(score) or not math.isfinite(score):
      annotations_lib.fail(path, video_id, f"{field}.score", f"expected a finite number, got {score!r}")
    scores[i] = float(score)
    if "label" in det or require_labels:
      if "label" not in det:
        annotations_lib.fail(path, video_id, f"{field}.label", f"missing in {det!r}")
      labels[i] = annotations_lib.check_label(det["label"], path, video_id, f"{field}.label")
  return {SEGMENTS: segments, LABELS: labels, SCORES: scores}


def load_results(path, require_labels=True):
  """Loads + validates a results JSON -> {video_id: {segments [N,2] float64 seconds,
  labels [N] str, scores [N] float64}}."""
  return parse_results(annotations_lib.read_json(path, "results"), path=path, require_labels=require_labels)


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
  """Writes {video_id: {segments [N,2], labels [N], scores [N]}} as a results JSON file
  (atomically; parent directories are created)."""
  data = results_to_json(results_by_video)
  # Atomically: a full disk or a kill mid-write leaves the previous file (or none), never a
  # truncated JSON that a later evaluation would fail on or read as fewer detections.
  return atomic_files.write_text(path, json.dumps(data))


def _examples(names, limit=3):
  names = sorted(map(str, names))
  return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")


def check_results_match_annotations(gt_by_video, results_by_video, annotations_path,
                                    results_path, subset=None, known_labels=None):
  """Checks a results file describes the annotated videos, before scoring; counts the rest.

  A results file keyed by other video ids (another subset, 'v_' prefixes, file names)
  otherwise scores as a plain 0 mAP, indistinguishable from a bad model: raises
  EvaluationFormatError when non-empty results share no video with the non-empty ground
  truth. Partial mismatches are returned for the report: {'videos_without_results': int,
  'unannotated_result_videos': int, 'unknown_label_predictions': {label: count}} (the last
  with `known_labels`, e.g. every class name of the annotation file: predictions whose label
  no annotation uses, such as 'class_3' from inference without a label map, or a typo; the
  protocols ignore them with the other labels outside the evaluated classes).
  """
  where = f"--subset {subset!r} of " if subset else ""
  gt_ids, res_ids = set(gt_by_video), set(results_by_video)
  if gt_ids and res_ids and not gt_ids & res_ids:
    raise EvaluationFormatError(
        f"file '{results_path}': none of its {len(res_ids)} video ids ({_examples(res_ids)}) "
        f"is among the {len(gt_ids)} videos of {where}'{annotations_path}' "
        f"({_examples(gt_ids)}); wrong --subset or another video id format?")
  unknown = {}
  if known_labels is not None:
    known = set(known_labels)
    for det in results_by_video.values():
      for label in (det.get(LABELS) if det.get(LABELS) is not None else ()):
        if label is not None and label not in known:
          unknown[label] = unknown.get(label, 0) + 1
  return {"videos_without_results": len(gt_ids - res_ids),
          "unannotated_result_videos": len(res_ids - gt_ids),
          "unknown_label_predictions": dict(sorted(unknown.items()))}


def input_notes(counts):
  """Lines for the report from check_results_match_annotations' counts (none if all match)."""
  lines = []
  if counts.get("videos_without_results"):
    lines.append(f"({counts['videos_without_results']} annotated videos have no results: "
                 "scored as no detections)")
  if counts.get("unannotated_result_videos"):
    lines.append(f"({counts['unannotated_result_videos']} videos of the results are not in "
                 "the annotated subset)")
  unknown = counts.get("unknown_label_predictions") or {}
  if unknown:
    lines.append(f"({sum(unknown.values())} predictions with labels that no annotation of "
                 f"the file uses: {_examples(unknown, limit=5)})")
  return lines


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
        annotations_lib.fail(path, None, field,
              f"expected 'video_id start end', got {line.rstrip()!r}")
      video_id = parts[0]
      try:
        values = [float(parts[1]), float(parts[2])]
      except ValueError:
        annotations_lib.fail(path, video_id, field, f"expected numeric start and end, got {line.rstrip()!r}")
      start, end = annotations_lib.check_segment(values, path, video_id, field)
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
