"""Text tables, JSON files and TensorBoard scalars from the evaluator's metrics dicts.

Two kinds of metrics dict are understood: detection (`mean_average_precision` of either
protocol: keys 'mAP', 'tiou_thresholds', 'per_class_ap', ...) and proposals
(`average_recall_metrics`: keys 'ar_at_an', 'average_recall', ...). A dict may hold both
under 'detection' and 'proposals' (what evaluate_main writes when asked for both).
"""

import json
import math

import numpy as np

from tal_tf.utils import atomic_files


def _is_detection(metrics):
  return "mAP" in metrics


def _is_proposals(metrics):
  return "ar_at_an" in metrics


def _thr_str(t):
  """Threshold as text without float noise: 0.30000000000000004 -> '0.3'."""
  return f"{float(t):.4f}".rstrip("0").rstrip(".") if float(t) != 0 else "0"


def _pct(x):
  return "   nan" if x is None or not math.isfinite(float(x)) else f"{100.0 * float(x):6.2f}"


def format_detection_table(metrics, per_class=False, reported_thresholds=None):
  """Text table of a detection metrics dict: mAP (%) per tIoU threshold and their average;
  optional per-class AP rows; `reported_thresholds` get a one-line summary."""
  thr = np.asarray(metrics["tiou_thresholds"], np.float64)
  m_ap = np.asarray(metrics["mAP"], np.float64)
  lines = []
  protocol = metrics.get("protocol", "")
  lines.append(f"Detection mAP ({protocol} protocol, {len(metrics.get('class_names', []))} "
               f"classes, {metrics.get('num_videos', '?')} videos)")
  header = "tIoU     " + " ".join(f"{_thr_str(t):>6s}" for t in thr) + "     avg"
  lines.append(header)
  lines.append("-" * len(header))
  lines.append("mAP (%)  " + " ".join(_pct(v) for v in m_ap) +
               f"  {_pct(metrics['average_mAP'])}")
  if per_class:
    lines.append("-" * len(header))
    names = list(metrics.get("class_names", []))
    width = max([len(n) for n in names] + [8])
    lines.append(f"{'class':<{width}s} " + " ".join(f"{_thr_str(t):>6s}" for t in thr) +
                 "     avg")
    ap = np.asarray(metrics["ap"], np.float64)
    for i, name in enumerate(names):
      lines.append(f"{name:<{width}s} " + " ".join(_pct(v) for v in ap[:, i]) +
                   f"  {_pct(ap[:, i].mean())}")
  if reported_thresholds is not None:
    parts = []
    # Per-threshold items only when they add to the table (a strict subset is reported).
    for r in (reported_thresholds if len(reported_thresholds) < thr.size else ()):
      idx = np.flatnonzero(np.isclose(thr, r))
      if idx.size:
        parts.append(f"mAP@{_thr_str(r)} = {_pct(m_ap[idx[0]]).strip()}")
    parts.append(f"average mAP ({_thr_str(thr[0])}:{_thr_str(thr[-1])}) = "
                 f"{_pct(metrics['average_mAP']).strip()}")
    lines.append(", ".join(parts))
  ignored = metrics.get("num_ignored_predictions", 0)
  if ignored:
    lines.append(f"({ignored} predictions with labels outside the evaluated classes ignored)")
  missing = metrics.get("classes_without_ground_truth") or []
  if missing:
    lines.append(f"(classes without ground truth, not averaged: {', '.join(map(str, missing))})")
  return "\n".join(lines)


def format_proposal_table(metrics):
  """Text table of a proposals metrics dict: AR (%) at each requested average number of
  proposals per video, plus the area under the AR-AN curve."""
  thr = np.asarray(metrics["tiou_thresholds"], np.float64)
  lines = [f"Proposal AR@AN (tIoU {_thr_str(thr[0])}:{_thr_str(thr[-1])}, {thr.size} "
           f"thresholds, {metrics.get('num_videos', '?')} videos)"]
  items = list(metrics["ar_at_an"].items())
  header = "AN       " + " ".join(f"{str(an):>6s}" for an, _ in items) + "     AUC"
  lines.append(header)
  lines.append("-" * len(header))
  lines.append("AR (%)   " + " ".join(_pct(v) for _, v in items) + f"  {_pct(metrics['auc'])}")
  return "\n".join(lines)


def format_metrics_table(metrics, per_class=False, reported_thresholds=None):
  """Text table of any evaluator metrics dict (detection, proposals or both)."""
  parts = []
  detection = metrics.get("detection", metrics if _is_detection(metrics) else None)
  proposals = metrics.get("proposals", metrics if _is_proposals(metrics) else None)
  if detection is not None:
    parts.append(format_detection_table(detection, per_class, reported_thresholds))
  if proposals is not None:
    parts.append(format_proposal_table(proposals))
  if not parts:
    raise ValueError(f"metrics: expected a detection ('mAP') or proposals ('ar_at_an') "
                     f"dict, got keys {sorted(metrics)}")
  return "\n\n".join(parts)


def to_jsonable(value):
  """numpy arrays/scalars -> lists/floats; NaN/inf -> None; dict keys -> str."""
  if isinstance(value, dict):
    return {(k if isinstance(k, str) else _key_str(k)): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return to_jsonable(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(float(value)) else None
  return value


def _key_str(k):
  if isinstance(k, (float, np.floating)):
    return _thr_str(k)
  return str(k)


def metrics_to_json_dict(metrics):
  """JSON-ready copy of a metrics dict; mAP and per-class AP also keyed by threshold."""
  out = to_jsonable(metrics)
  for d_src, d_out in ((metrics.get("detection", metrics), out.get("detection", out)),):
    if _is_detection(d_src):
      thr = [_thr_str(t) for t in np.asarray(d_src["tiou_thresholds"])]
      d_out["mAP_by_tiou"] = dict(zip(thr, to_jsonable(np.asarray(d_src["mAP"]))))
  return out


def write_metrics_json(metrics, path, extra=None):
  """Writes a metrics dict (+ `extra` top-level keys) as indented JSON (NaN -> null),
  atomically (a temporary file renamed over `path`); returns the path."""
  payload = metrics_to_json_dict(metrics)
  payload.update(extra or {})
  return atomic_files.write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def metrics_to_scalars(metrics, prefix=""):
  """Flat {name: float} for TensorBoard: 'mAP@0.5', 'average_mAP', 'AR@100', 'AR_AUC'."""
  out = {}
  detection = metrics.get("detection", metrics if _is_detection(metrics) else None)
  proposals = metrics.get("proposals", metrics if _is_proposals(metrics) else None)
  if detection is not None:
    for t, v in zip(np.asarray(detection["tiou_thresholds"]), np.asarray(detection["mAP"])):
      out[f"{prefix}mAP@{_thr_str(t)}"] = float(v)
    out[f"{prefix}average_mAP"] = float(detection["average_mAP"])
  if proposals is not None:
    for an, v in proposals["ar_at_an"].items():
      out[f"{prefix}AR@{an}"] = float(v)
    out[f"{prefix}AR_AUC"] = float(proposals["auc"])
  return out
