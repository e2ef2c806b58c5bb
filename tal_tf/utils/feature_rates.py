"""The feature rates a model was trained on, and the check of the rate used at inference.

A model's anchors and receptive fields are in feature steps, and postprocessing turns steps
into seconds with the rate it is given. A wrong rate at inference therefore scales every
detection time, and a rate far from the training rates shows the network actions at a
temporal scale it never saw. Nothing in the graph can tell, so the rates travel beside it:

  training   `record_training_rates` scans the train reader's records (video/feature_fps
             of each video; for frame records the frame rate) and writes
             <model_dir>/training_feature_fps.json (atomically):
               {"min": 1.5625, "max": 1.875, "videos": 3,
                "rates": [{"fps": 1.5625, "videos": 2}, {"fps": 1.875, "videos": 1}],
                "since_step": 0, "input_path": [...]}
             The rate may differ per video (a converter run with --frames_per_step over
             25 and 30 fps videos). Phases' own readers (e.g. ETP's trimmed frame clips)
             are not summarized: the serving rate input is the train reader's rate.
  export     the exporter copies min / max / videos / rates into model_info.json as
             "training_feature_fps"; a model_dir without the file (a run older than this
             record) exports without it, and inference then cannot check the rate.
  inference  `RateCheck` compares each video's rate with the training range widened by
             TOLERANCE and, where the video's duration is known independently (records'
             video/duration, the decoded video of --video), num_steps / rate with that
             duration; a mismatch is a one-line error, or a warning with the override flag.

Resume policy. A resumed run whose records hold the rates already recorded leaves the file
alone. Different rates (other data) mean the weights have now seen both: the record becomes
the union (min of the minima, max of the maxima, per rate the larger video count, so
`videos` is exact when a run re-reads the same videos and a lower bound otherwise), with a
warning naming both. A model_dir with checkpoints but no record (trained before this
record existed) gets the current data's rates with `since_step` = the step resumed at: the
earlier steps' data is unknown. A fresh run (no checkpoint) replaces any old record.
"""

import json
import os

from absl import logging
from google.protobuf.message import DecodeError

from tal_tf.core.standard_fields import SequenceExampleFields as SEF
# TensorFlow and the data modules are imported where used: the CLIs define their flags
# (define_check_flags) before they load TensorFlow.

SUMMARY_NAME = "training_feature_fps.json"
MODEL_INFO_KEY = "training_feature_fps"
OVERRIDE_FLAG = "--allow_feature_fps_mismatch"
# A rate within [min / 1.25, max * 1.25] of the training rates is accepted. Why 1.25: the
# multi-scale anchors are spaced by a factor of 2 in length, so an action whose length in
# steps changes by less than sqrt(2) ~ 1.41 still falls nearest the same anchor scale it
# would have at a training rate; 1.25 stays well inside that, yet admits the 25 <-> 30 fps
# (factor 1.2) difference common between videos converted at one nominal frame rate. A
# wrong rate guessed by hand (e.g. 1 step/s for 16-frame steps at 25 fps, factor 1.6; or
# frames per second for steps per second) falls far outside.
TOLERANCE = 1.25
# Digits kept of a rate (float32 in the records) so 1.5625 read twice is one rate.
_DIGITS = 6


class FeatureRateError(ValueError):
  """The feature rate used at inference disagrees with the training rates or the video."""


# --------------------------------------------------------------------------- training
def _varint(data, pos):
  """Decodes a protobuf varint at data[pos:]; returns (value, next position)."""
  value, shift = 0, 0
  while pos < len(data):
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos += 1
    if not byte & 0x80:
      return value, pos
    shift += 7
  raise ValueError("truncated varint")


def record_contexts(path):
  """The context (tf.train.Features) of every record of a TFRecord file of
  SequenceExamples, reading only the context bytes: serializers write the context (field
  1) before the feature lists, so the features or JPEG frames are skipped with seeks. A
  record laid out otherwise is parsed whole. A truncated last record is not read."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.data import deterministic_order  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    for offset, length in deterministic_order.record_spans(path, f):
      f.seek(offset)
      head = f.read(min(length, 11))
      context = None
      if head[:1] == b"\x0a":  # Field 1 (context), length-delimited.
        try:
          size, start = _varint(head, 1)
        except ValueError:
          size, start = length + 1, 0
        if start + size <= length:
          f.seek(offset + start)
          context = tf.train.Features.FromString(f.read(size))
      if context is None:
        f.seek(offset)
        context = tf.train.SequenceExample.FromString(f.read(length)).context
      yield context


def scan_rates(file_patterns, field="train_input_reader", skip_corrupt=False):
  """{video_id: rate} over every record matched by `file_patterns` (a long video split into
  several records counts once). A record without a positive video/feature_fps is a
  ValueError naming the file and the record; so is one that does not parse, unless
  `skip_corrupt` (the reader skips damaged files then)."""
  from tal_tf.data import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    files = input_pipeline.list_files(list(file_patterns))
  except ValueError as e:
    raise ValueError(f"{field}.input_path: {e}") from None
  rates = {}
  for path in files:
    try:
      rates.update(_file_rates(path))
    except DecodeError as e:
      if not skip_corrupt:
        raise ValueError(f"{path}: a record does not parse as a SequenceExample ({e}); set "
                         f"{field}.skip_corrupt_records: true to skip damaged files") from None
  return rates


def _file_rates(path):
  """{video_id: rate} of one file's records."""
  rates = {}
  for index, context in enumerate(record_contexts(path)):
    feature = context.feature
    fps = list(feature[SEF.feature_fps].float_list.value) if SEF.feature_fps in feature \
        else []
    if not fps or not fps[0] > 0:
      raise ValueError(f"{path}[record {index}]: {SEF.feature_fps} is missing or not > 0 "
                       f"({fps[:1]}); the training rates cannot be recorded")
    ids = feature[SEF.video_id].bytes_list.value if SEF.video_id in feature else []
    video = ids[0].decode("utf-8", "replace") if ids else f"{path}[record {index}]"
    rates[video] = round(float(fps[0]), _DIGITS)
  return rates


def summarize(rates_by_video):
  """{video_id: rate} -> {min, max, videos, rates: [{fps, videos}] ascending} (None when
  empty)."""
  counts = {}
  for rate in rates_by_video.values():
    counts[rate] = counts.get(rate, 0) + 1
  return _from_counts(counts)


def _from_counts(counts):
  if not counts:
    return None
  return dict(min=min(counts), max=max(counts), videos=int(sum(counts.values())),
              rates=[dict(fps=r, videos=int(counts[r])) for r in sorted(counts)])


def _counts(summary):
  return {round(float(r["fps"]), _DIGITS): int(r["videos"]) for r in summary.get("rates", [])}


def merge(old, new):
  """The union of two summaries (see the module doc): per rate the larger video count."""
  counts = _counts(old)
  for rate, n in _counts(new).items():
    counts[rate] = max(counts.get(rate, 0), n)
  return _from_counts(counts)


def summary_path(model_dir):
  return os.path.join(model_dir, SUMMARY_NAME)


def read_summary(model_dir):
  """The training rate summary of `model_dir` (dict), or None when it has none."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = summary_path(model_dir)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    try:
      summary = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  for key in ("min", "max", "videos"):
    if not isinstance(summary.get(key), (int, float)):
      raise ValueError(f"{path}: field {key!r} is missing or not a number")
  return summary


def write_summary(model_dir, summary):
  """Writes `summary` to <model_dir>/training_feature_fps.json atomically; returns the path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import atomic_files  # pylint: disable=g-import-not-at-top
  path = summary_path(model_dir)
  text = json.dumps(summary, indent=2, sort_keys=True)
  if "://" in path:  # A remote file system writes objects whole.
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(text)
    return path
  return atomic_files.write_text(path, text)


def describe(summary):
  """'1.5625..1.875 steps/s over 3 videos' (or one rate)."""
  lo, hi = float(summary["min"]), float(summary["max"])
  span = f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"
  return f"{span} steps/s over {int(summary['videos'])} videos"


def record_training_rates(model_dir, file_patterns, step=0, resumed=False,
                          field="train_input_reader", skip_corrupt=False):
  """Scans the training records and writes (or keeps, or merges: see the module doc) the
  rate summary of `model_dir`. step: the global step training starts at; resumed: a
  checkpoint was restored. Returns the summary now recorded (None: no records)."""
  current = summarize(scan_rates(file_patterns, field, skip_corrupt))
  if current is None:
    logging.warning("%s: no records; no training feature rates recorded", field)
    return None
  current["input_path"] = [str(p) for p in file_patterns]
  old = read_summary(model_dir) if resumed else None
  if old is None:
    current["since_step"] = int(step)
    if resumed:
      logging.warning("%s had no %s (trained before the rates were recorded): recording the "
                      "current data's rates from step %d on", model_dir, SUMMARY_NAME, step)
    write_summary(model_dir, current)
    return current
  merged = merge(old, current)
  if _counts(merged) == _counts(old):
    return old  # The same data (or a subset of it): the record stands.
  merged["since_step"] = int(old.get("since_step", 0))
  merged["input_path"] = sorted(set(old.get("input_path", [])) | set(current["input_path"]))
  logging.warning("the resumed run's records have feature rates %s, the earlier steps' %s: "
                  "%s now records the union %s", describe(current), describe(old),
                  summary_path(model_dir), describe(merged))
  write_summary(model_dir, merged)
  return merged


def for_model_info(summary):
  """The part of a summary model_info.json carries."""
  if summary is None:
    return None
  return {k: summary[k] for k in ("min", "max", "videos", "rates") if k in summary}


# --------------------------------------------------------------------------- inference
def define_check_flags(flag_values, rate_sources, duration_sources):
  """Defines --allow_feature_fps_mismatch and --length_tolerance on `flag_values` (the
  inference CLI's and the serving client's); the *_sources name, in the help, where a CLI
  takes its rates and known durations from."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_boolean(
      OVERRIDE_FLAG[2:], False, f"Run even when the feature rate ({rate_sources}) is outside "
      f"the model's training rates widened by a factor {TOLERANCE:g}, or when a video's "
      "num_steps / rate disagrees with its known duration (warnings instead of errors).",
      flag_values=flag_values)
  flags.DEFINE_float(
      "length_tolerance", 0.1, "Relative tolerance (with a 2-step floor) of num_steps vs "
      f"duration x feature_fps where the duration is known apart from the features "
      f"({duration_sources}), as in create_tfrecord.", lower_bound=0.0,
      flag_values=flag_values)


def accepted_range(summary, tolerance=TOLERANCE):
  """(lo, hi) rates accepted for a model trained at `summary`'s rates."""
  return float(summary["min"]) / tolerance, float(summary["max"]) * tolerance


def check_duration(video_id, num_steps, rate, duration, length_tolerance=0.1, where=""):
  """None if num_steps agrees with duration x rate (the converter's check: relative
  `length_tolerance` with a 2-step floor), else the one-line reason."""
  from tal_tf.dataset_tools import feature_readers  # pylint: disable=g-import-not-at-top
  expected = float(duration) * float(rate)
  if abs(num_steps - expected) <= feature_readers.steps_tolerance(expected, length_tolerance):
    return None
  return (f"video {video_id}{where}: {num_steps} steps vs duration {duration:g} s x "
          f"{rate:g} steps/s = {expected:.1f} (beyond --length_tolerance "
          f"{length_tolerance:g}): the rate is wrong for this video")


class RateCheck:
  """Checks the rates (and, where known, the durations) of the videos inference runs on.

  training: the model's summary (model_info.json "training_feature_fps"), or None (an
  older model: rates are not checked, said once with the first video). model: the model or export dir named in
  messages. allow: warn instead of failing (the override flag). length_tolerance: as the
  converter's --length_tolerance.
  """

  def __init__(self, training, model, allow=False, length_tolerance=0.1,
               override_flag=OVERRIDE_FLAG):
    self.training = training
    self.model = model
    self.allow = bool(allow)
    self.length_tolerance = float(length_tolerance)
    self.override_flag = override_flag
    self._warned = set()

  def _fail(self, message, key):
    if not self.allow:
      raise FeatureRateError(f"{message}; pass {self.override_flag} to run anyway")
    if key not in self._warned:
      self._warned.add(key)
      logging.warning("%s (%s given: running anyway)", message, self.override_flag)

  def check_rate(self, rate, what):
    """Fails (or warns once per rate) when `rate` is outside the accepted range; `what`
    names where the rate comes from (e.g. '--feature_fps')."""
    if self.training is None or rate is None:
      return
    lo, hi = accepted_range(self.training)
    if lo <= float(rate) <= hi:
      return
    self._fail(f"{what} = {float(rate):g} is outside the feature rates the model {self.model} "
               f"was trained on ({describe(self.training)}; accepted {lo:.4g}..{hi:.4g}, "
               f"a factor {TOLERANCE:g} around them): detection times and action scales "
               "would be wrong",
               ("rate", round(float(rate), _DIGITS)))

  def check_video(self, video, what):
    """check_rate on a feature_readers.Video's rate, then its duration (if it has one)."""
    self.check_rate(video.feature_fps, what)
    duration = getattr(video, "duration", None)
    if duration and video.feature_fps:
      source = getattr(video, "duration_source", None) or getattr(video, "where", None)
      reason = check_duration(video.video_id, video.num_steps, video.feature_fps, duration,
                              self.length_tolerance, f" ({source})" if source else "")
      if reason:
        self._fail(reason, ("duration", video.video_id))

  def videos(self, source, what):
    """Iterates `source` ((video_id, Video or error) pairs) checking each Video; `what`:
    a string, or a function of the Video naming where its rate comes from."""
    for video_id, video in source:
      if not isinstance(video, Exception):
        if self.training is None and "unchecked" not in self._warned:
          # Said with the first video, not before: a CLI failing earlier (an unreachable
          # server) then reports one line only.
          self._warned.add("unchecked")
          logging.warning("%s records no training feature rates (exported or trained before "
                          "they were recorded): the feature rate is not checked", self.model)
        self.check_video(video, what(video) if callable(what) else what)
      yield video_id, video
