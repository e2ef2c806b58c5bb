"""Counting and reporting of real-data quirks met during conversion (never silent)."""

import collections
import json

# kind -> (what happened, what the converter did). Order = report order.
QUIRK_KINDS = collections.OrderedDict([
    ("subset_missing", "video has no \"subset\" string: not selected by --subset (listed)"),
    ("segment_clipped", "segment ran past the video end (or before 0): clipped"),
    ("segment_outside_video", "segment lies entirely after the video end (or before 0): "
                              "dropped"),
    ("segment_degenerate", "segment zero-length or inverted: dropped"),
    ("segment_malformed", "segment not a pair of finite numbers, or no label: dropped"),
    ("segment_ignored_class", "segment of a class in --ignore_classes: dropped"),
    ("label_ignored_class", "video-level label of a class in --ignore_classes: dropped"),
    ("trimmed_segment_replaced", "segment of a trimmed clip: replaced by [0, duration]"),
    ("video_without_segments", "video has no segment and no video-level label left (kept, "
                               "as background only)"),
    ("video_labels_only", "video has video-level labels but no segment (kept, weakly "
                          "labelled)"),
    ("duration_missing", "video has no usable duration: taken as num_steps / feature_fps"),
    ("fps_missing", "video has no fps for --frames_per_step: skipped"),
    ("features_missing", "feature file or dataset missing: video skipped"),
    ("features_empty", "feature array has no steps: video skipped"),
    ("features_wrong_dim", "feature array has the wrong shape or dim: video skipped"),
    ("features_non_finite", "feature array holds NaN or Inf: video skipped"),
    ("features_malformed", "feature file unreadable or of a non-numeric type: video skipped"),
    ("stream_length_trimmed", "streams differ in length (within tolerance): trimmed to shortest"),
    ("stream_length_mismatch", "streams differ in length beyond tolerance: video skipped"),
    ("length_inconsistent", "num_steps differs from duration x feature_fps beyond tolerance "
                            "(kept)"),
    ("video_missing", "no video file for the id: video skipped"),
    ("video_empty", "zero-length video file or no decodable frame: video skipped"),
    ("video_unreadable", "container or codec FFmpeg cannot open: video skipped"),
    ("video_no_stream", "file has no video stream: video skipped"),
    ("video_corrupt", "decoding failed part-way: video skipped"),
    ("video_truncated", "frames end well before the duration the header announces: video "
                        "skipped"),
])

SKIP_KINDS = ("fps_missing", "features_missing", "features_empty", "features_wrong_dim",
              "features_non_finite", "features_malformed", "stream_length_mismatch",
              "video_missing", "video_empty", "video_unreadable", "video_no_stream",
              "video_corrupt", "video_truncated")
# Kinds whose every video is listed in the printed report (not just the first few).
LIST_ALL_KINDS = SKIP_KINDS + ("subset_missing",)


class QuirkReport:
  """Counts quirks by kind and keeps (video_id, detail) for each occurrence."""

  def __init__(self):
    self.counts = collections.Counter()
    self.events = collections.defaultdict(list)

  def add(self, kind, video_id, detail=""):
    """Records one occurrence of `kind` (a QUIRK_KINDS key) for `video_id`."""
    if kind not in QUIRK_KINDS:
      raise KeyError(f"unknown quirk kind {kind!r}; known: {', '.join(QUIRK_KINDS)}")
    self.counts[kind] += 1
    self.events[kind].append((video_id, detail))

  def videos(self, kind):
    """Sorted unique video ids that had `kind`."""
    return sorted({v for v, _ in self.events.get(kind, [])})

  def skipped_videos(self):
    """{video_id: reason} of every skipped video."""
    out = {}
    for kind in SKIP_KINDS:
      for video_id, detail in self.events.get(kind, []):
        out.setdefault(video_id, f"{kind}: {detail}" if detail else kind)
    return out

  def format(self, max_examples=10):
    """Human-readable multi-line summary of all quirks seen."""
    if not self.counts:
      return "No data quirks found."
    lines = []
    for kind, meaning in QUIRK_KINDS.items():
      n = self.counts.get(kind, 0)
      if not n:
        continue
      lines.append(f"  {kind}: {n} -- {meaning}")
      shown = self.events[kind] if kind in LIST_ALL_KINDS else self.events[kind][:max_examples]
      for video_id, detail in shown:
        lines.append(f"      {video_id}" + (f": {detail}" if detail else ""))
      if len(shown) < n:
        lines.append(f"      ... and {n - len(shown)} more")
    return "\n".join(lines)

  def to_dict(self):
    """JSON-ready dict: {kind: {'count': n, 'events': [[video_id, detail], ...]}}."""
    return {kind: {"count": self.counts[kind],
                   "events": [list(e) for e in self.events[kind]]}
            for kind in QUIRK_KINDS if self.counts.get(kind)}

  def to_json(self):
    """to_dict() as indented JSON text."""
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)
