r"""Converts ActivityNet-style annotations + per-video features into sharded TFRecords.

Each video becomes one `tf.train.SequenceExample` (see tal_tf/data/sequence_example.py).

Examples:
  # One .npy directory per stream, features at a fixed rate:
  python -m tal_tf.dataset_tools.create_tfrecord \
      --annotations=thumos14.json --subset=validation \
      --features=rgb:feats/rgb,flow:feats/flow --feature_fps=2.0 \
      --label_map=thumos14_label_map.pbtxt --output=records/val --num_shards=4
  # One concatenated .npy per video, split by dims; rate = JSON fps / 16 frames per step:
  ... --concat_features=feats/both --stream_dims=rgb:1024,flow:1024 --frames_per_step=16
  # HDF5 with one dataset per video:
  ... --hdf5_features=feats.h5 --stream_dims=rgb:1024,flow:1024 --feature_fps=2.0

  # Trimmed clips (e.g. UCF101): each video is one action, segment [0, duration]:
  ... --trimmed

Output files: `<output>-00000-of-0000N.tfrecord`, ..., plus `<output>.summary.json` with the
counts and the per-video list of every data quirk met (also printed at the end). The summary's
name does not match the shard glob `<output>-*`.

Nothing is lost on failure: shards and summary are written under hidden temporary names and
renamed over the previous outputs only once every shard is complete (the summary last), so a
killed or failed run (e.g. disk full) leaves the previous outputs of the prefix as they were.
Shards of the prefix with another shard count (`<output>-SSSSS-of-MMMMM.tfrecord`, M != N)
would be read twice by the glob: they are removed after the new shards are in place and
listed in the summary. Errors print one line naming the file or flag and exit non-zero.
"""

import json
import os
import re
import sys
import time

from absl import app
from absl import flags

from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import label_map_util
from tal_tf.dataset_tools import annotations as annotations_lib
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import quirks
from tal_tf.utils import atomic_files
from tal_tf.utils import cli


class ConversionError(ValueError):
  """The conversion cannot be done as asked; the message names the file, flag or value."""


def define_flags(flag_values=flags.FLAGS):
  """Defines the converter's flags on `flag_values` (the global FLAGS by default)."""
  fv = flag_values
  flags.DEFINE_string("annotations", None, "ActivityNet-style annotation JSON.", flag_values=fv)
  flags.DEFINE_string("subset", "", "Subset(s) to convert, comma separated, case-insensitive "
                      "(e.g. 'validation'); empty = all videos.", flag_values=fv)
  flags.DEFINE_string("label_map", None, "Label map text proto: read if it exists, else "
                      "written from the classes of the whole JSON (sorted by name, ids from "
                      "1).", flag_values=fv)
  flags.DEFINE_string("output", None, "Output prefix: writes <output>-SSSSS-of-NNNNN.tfrecord.",
                      flag_values=fv)
  flags.DEFINE_integer("num_shards", 1, "Number of output shards.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_string("features", None, "Per-stream .npy directories: 'rgb:DIR,flow:DIR' "
                      "holding <video_id>.npy [T, D].", flag_values=fv)
  flags.DEFINE_string("concat_features", None, "Directory of <video_id>.npy [T, sum(D)] split "
                      "by --stream_dims.", flag_values=fv)
  flags.DEFINE_string("hdf5_features", None, "HDF5 file with one dataset /<video_id> per "
                      "video ([T, sum(D)], split by --stream_dims), or 'rgb:FILE,flow:FILE'.",
                      flag_values=fv)
  flags.DEFINE_string("stream_dims", None, "Stream dims 'rgb:1024,flow:1024' (required with "
                      "--concat_features and --hdf5_features; inferred for --features).",
                      flag_values=fv)
  flags.DEFINE_float("feature_fps", None, "Feature steps per second (all videos).",
                     flag_values=fv)
  flags.DEFINE_float("frames_per_step", None, "Video frames per feature step: feature_fps = "
                     "the JSON's per-video fps / frames_per_step.", flag_values=fv)
  flags.DEFINE_list("ignore_classes", [], "Classes whose segments are dropped (e.g. "
                    "Ambiguous).", flag_values=fv)
  flags.DEFINE_float("length_tolerance", 0.1, "Relative tolerance (with a 2-step floor) for "
                     "num_steps vs duration x feature_fps and for stream-length differences.",
                     flag_values=fv)
  flags.DEFINE_string("summary_json", None, "Where to write the summary JSON (default "
                      "<output>.summary.json).", flag_values=fv)
  flags.DEFINE_boolean("trimmed", False, "Every video is a trimmed clip whose whole extent "
                       "is the action: one segment [0, duration] per video-level label (per "
                       "video: \"trimmed\": true in the JSON).", flag_values=fv)


def feature_source_from_flags(fv):
  """Builds the feature reader selected by exactly one of the three feature flags."""
  chosen = [name for name in ("features", "concat_features", "hdf5_features")
            if getattr(fv, name)]
  if len(chosen) != 1:
    raise app.UsageError("give exactly one of --features, --concat_features, --hdf5_features"
                         f" (got {', '.join('--' + c for c in chosen) or 'none'})")
  dims = feature_readers.parse_stream_dims(fv.stream_dims) if fv.stream_dims else None
  if fv.features:
    return feature_readers.NpyDirSource(
        feature_readers.parse_stream_paths(fv.features, "dir"), dims)
  if dims is None:
    raise app.UsageError(f"--{chosen[0]} needs --stream_dims, e.g. rgb:1024,flow:1024")
  if fv.concat_features:
    return feature_readers.ConcatNpySource(fv.concat_features, dims)
  return feature_readers.Hdf5Source(feature_readers.hdf5_files(fv.hdf5_features), dims)


def resolve_label_map(database, video_ids, annotations_path, label_map_path, ignore_classes):
  """(label-map items, written?): reads `label_map_path` if it exists, else writes it from
  the classes of the whole database (sorted by name, ids from 1). Raises ValueError when a
  class of the selected videos is missing from it (checked before anything is written, so
  a wrong label map leaves no partial shards behind)."""
  if os.path.exists(label_map_path):
    items = label_map_util.load_label_map(label_map_path)
    written = False
  else:
    names = annotations_lib.class_names(database, ignore_classes)
    if not names:
      raise ValueError(f"{annotations_path}: no classes found to write label map "
                       f"{label_map_path!r}")
    items = label_map_util.items_from_class_names(names)
    label_map_util.write_label_map(label_map_path, items)
    written = True
  known = {it.name for it in items}
  unknown = sorted(set(annotations_lib.class_names(
      {v: database[v] for v in video_ids}, ignore_classes)) - known)
  if unknown:
    raise ValueError(f"{annotations_path}: classes {unknown} of the selected videos are not "
                     f"in label map {label_map_path!r}; add them to the label map or list "
                     f"them in --ignore_classes")
  return items, written


def shard_paths(output_prefix, num_shards):
  """Output file names `<prefix>-00000-of-0000N.tfrecord`."""
  return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def summary_path(output_prefix):
  """Default summary file `<prefix>.summary.json` (the shard glob `<prefix>-*` skips it)."""
  return f"{output_prefix}.summary.json"


def _shard_name_pattern(output_prefix):
  """Regex of the prefix's own shard file names (any shard count)."""
  return re.escape(os.path.basename(output_prefix)) + r"-\d{5}-of-(\d{5})\.tfrecord"


def stale_shards(output_prefix, num_shards):
  """Existing shards of the prefix written with another shard count (sorted paths)."""
  directory = os.path.dirname(os.path.abspath(output_prefix))
  if not os.path.isdir(directory):
    return []
  pattern = re.compile(_shard_name_pattern(output_prefix))
  out = []
  for name in sorted(os.listdir(directory)):
    match = pattern.fullmatch(name)
    if match and int(match.group(1)) != int(num_shards):
      out.append(os.path.join(os.path.dirname(output_prefix), name))
  return out


class Progress:
  """Prints progress lines (done/total, rate, ETA) to stderr every few seconds on long runs."""

  def __init__(self, total, every_seconds, stream, name="create_tfrecord"):
    self.name = name
    self.total = total
    self.every = every_seconds
    self.stream = stream
    self.start = time.time()
    self.last = self.start

  def update(self, done, written):
    now = time.time()
    if self.stream is None or (now - self.last < self.every and done != self.total):
      return
    if done == self.total and now - self.start < self.every:
      return  # Short runs print only the summary.
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = (self.total - done) / max(rate, 1e-9)
    print(f"[{self.name}] {done}/{self.total} videos ({written} written), "
          f"{rate:.1f} videos/s, ETA {eta:.0f} s", file=self.stream, flush=True)


class ConversionSummary:
  """Result of a conversion: counts, shard paths, label map and the quirk report."""

  def __init__(self, **kwargs):
    self.__dict__.update(kwargs)

  def format(self):
    """Human-readable summary."""
    lines = [
        f"Converted {self.num_written} of {self.num_selected} videos "
        f"(subset: {self.subset or 'all'}) into {len(self.shards)} shard(s) "
        f"{self.output_prefix}-*-of-{len(self.shards):05d}.tfrecord in {self.seconds:.1f} s.",
    ]
    if self.removed_stale_shards:
      lines.append(f"Removed {len(self.removed_stale_shards)} stale shard(s) of this prefix "
                   f"with another shard count: {', '.join(self.removed_stale_shards)}")
    lines += [
        f"Streams: {', '.join(f'{s}:{d}' for s, d in self.stream_dims.items())}; "
        f"{self.num_segments} segments; label map {self.label_map} "
        f"({'written' if self.label_map_written else 'read'}, {self.num_classes} classes).",
        "Data quirks:",
        self.report.format(),
    ]
    return "\n".join(lines)

  def to_dict(self):
    """JSON-ready dict (written to <output>.summary.json)."""
    return {
        "num_selected": self.num_selected, "num_written": self.num_written,
        "shard_bytes": self.shard_bytes, "shard_records": self.shard_records,
        "removed_stale_shards": self.removed_stale_shards, "trimmed": self.trimmed,
        "num_skipped": self.num_selected - self.num_written,
        "num_segments": self.num_segments, "subset": self.subset,
        "shards": self.shards, "stream_dims": dict(self.stream_dims),
        "label_map": self.label_map, "label_map_written": self.label_map_written,
        "num_classes": self.num_classes, "seconds": self.seconds,
        "skipped_videos": self.report.skipped_videos(), "quirks": self.report.to_dict(),
    }


def convert_dataset(annotations_path, output_prefix, label_map_path, feature_source,
                    subset=None, num_shards=1, feature_fps=None, frames_per_step=None,
                    ignore_classes=(), length_tolerance=0.1, summary_json=None,
                    progress_every_seconds=10.0, progress_stream=sys.stderr, trimmed=False):
  """Converts one subset into sharded TFRecords; returns a ConversionSummary.

  Videos are written in sorted id order, round-robin over shards. Quirks (see
  quirks.QUIRK_KINDS) are handled, counted and listed; videos with unusable features are
  skipped. Exactly one of feature_fps / frames_per_step must be given. `trimmed`: every
  video is a trimmed clip (one segment [0, duration] per video-level label); a video's
  "trimmed": true in the JSON does the same for that video. Outputs replace the previous
  ones only once complete (module doc); a write failure raises ConversionError and leaves
  them intact.
  """
  start_time = time.time()
  if (feature_fps is None) == (frames_per_step is None):
    raise ValueError("give exactly one of feature_fps (steps per second) or frames_per_step "
                     f"(got feature_fps={feature_fps}, frames_per_step={frames_per_step})")
  if feature_fps is not None and not feature_fps > 0:
    raise ValueError(f"feature_fps must be > 0, got {feature_fps}")
  if frames_per_step is not None and not frames_per_step > 0:
    raise ValueError(f"frames_per_step must be > 0, got {frames_per_step}")
  if int(num_shards) < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  if not output_prefix:
    raise ValueError("output prefix is empty; expected e.g. 'records/train'")
  ignore_classes = [c for c in ignore_classes if c]

  report = quirks.QuirkReport()
  database = annotations_lib.load_database(annotations_path)
  video_ids = annotations_lib.select_videos(database, subset, annotations_path, report)
  items, label_map_written = resolve_label_map(database, video_ids, annotations_path,
                                               label_map_path, ignore_classes)
  name_to_id = {it.name: it.id for it in items}

  # One tolerance for this conversion: stream lengths (checked by the source) and steps vs
  # duration x rate.
  feature_source.length_tolerance = float(length_tolerance)
  stream_dims = feature_source.prepare(video_ids)
  # Deferred so `--help` and errors in flags, annotations or label map come fast.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.data import sequence_example  # pylint: disable=g-import-not-at-top
  out_dir = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(out_dir, exist_ok=True)
  # Temporaries of killed earlier runs (their process is gone) are deleted first.
  atomic_files.remove_stale_temporaries(
      out_dir, _shard_name_pattern(output_prefix) + "|"
      + re.escape(os.path.basename(summary_json or summary_path(output_prefix))))
  paths = shard_paths(output_prefix, int(num_shards))
  temps = [atomic_files.temp_name(p) for p in paths]
  final_summary = summary_json or summary_path(output_prefix)
  temp_summary = atomic_files.temp_name(final_summary)
  progress = Progress(len(video_ids), progress_every_seconds, progress_stream)
  num_written = 0
  num_segments = 0
  observed = []  # (video_id, example) of written videos with an annotated duration.
  shard_records = [0] * len(paths)
  writers = []
  current = paths[0]
  try:
    try:
      for path, temp in zip(paths, temps):
        current = path
        writers.append(tf.io.TFRecordWriter(temp))
      for index, video_id in enumerate(video_ids):
        entry = database[video_id]
        example = _convert_video(video_id, entry, feature_source, name_to_id, report,
                                 feature_fps, frames_per_step, ignore_classes,
                                 length_tolerance, sequence_example, trimmed)
        if example is not None:
          shard = num_written % len(writers)
          current = paths[shard]
          writers[shard].write(example.SerializeToString())
          shard_records[shard] += 1
          num_written += 1
          num_segments += len(example.context.feature["segment/label"].int64_list.value)
          if annotations_lib.video_duration(entry) is not None:
            observed.append((video_id, example))
        progress.update(index + 1, num_written)
      for path, writer in zip(paths, writers):
        current = path
        writer.close()
    except (OSError, tf.errors.OpError) as e:
      raise ConversionError(_write_error(e, current)) from None
    _check_rate(observed, report, feature_fps, length_tolerance)
    stale = stale_shards(output_prefix, num_shards)
    summary = ConversionSummary(
        num_selected=len(video_ids), num_written=num_written, num_segments=num_segments,
        subset=subset or "", shards=paths, output_prefix=output_prefix,
        stream_dims=stream_dims, label_map=label_map_path,
        label_map_written=label_map_written,
        num_classes=label_map_util.get_num_classes(items),
        seconds=time.time() - start_time, report=report,
        shard_bytes=[os.path.getsize(t) for t in temps], shard_records=shard_records,
        removed_stale_shards=stale, trimmed=bool(trimmed))
    try:
      current = final_summary
      with open(temp_summary, "w", encoding="utf-8") as f:
        json.dump(summary.to_dict(), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
      # Commit: the shards, then (after the stale shards are gone) the summary, each by an
      # atomic rename. A kill among these renames leaves whole files of either run.
      for temp, path in zip(temps, paths):
        current = path
        os.replace(temp, path)
      for path in stale:
        os.remove(path)
      current = final_summary
      os.replace(temp_summary, final_summary)
    except OSError as e:
      raise ConversionError(_write_error(e, current)) from None
  finally:
    for writer in writers:
      try:
        writer.close()
      except Exception:  # pylint: disable=broad-except  # Already failing: keep that error.
        pass
    for temp in temps + [temp_summary]:
      if os.path.exists(temp):
        os.remove(temp)
  summary.summary_json = final_summary
  return summary


def _check_rate(observed, report, feature_fps, length_tolerance):
  """Refuses a conversion in which every written video (two or more, with an annotated
  duration) has a length_inconsistent quirk: the rate flag is then wrong for the dataset
  (e.g. --feature_fps 20 for features at 2 steps/s), and records written with it would
  place every segment at the wrong steps. One video off is a quirk; all of them, a mistake."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  inconsistent = set(report.videos("length_inconsistent"))
  if len(observed) < 2 or not all(v in inconsistent for v, _ in observed):
    return
  context = [e.context.feature for _, e in observed]
  rates = [c[SEF.num_steps].int64_list.value[0] / c[SEF.duration].float_list.value[0]
           for c in context if c[SEF.duration].float_list.value[0] > 0]
  video_id, detail = report.events["length_inconsistent"][0]
  flag = f"--feature_fps={feature_fps:g}" if feature_fps is not None else "--frames_per_step"
  measured = f"; the features run at about {np.median(rates):.3g} steps/s" if rates else ""
  raise ConversionError(
      f"{flag}: all {len(observed)} converted videos have num_steps far from duration x rate "
      f"(e.g. {video_id}: {detail}){measured}: wrong rate? Nothing was written; "
      f"--length_tolerance (now {length_tolerance:g}) larger converts them anyway")


def _write_error(error, path):
  """One-line description of a failed write of `path` (OSError or a TensorFlow error)."""
  if isinstance(error, OSError):
    return f"cannot write {atomic_files.describe_os_error(error, path)}"
  message = str(getattr(error, "message", error)).strip().splitlines()[0]
  if "space left" in message.lower():
    message = "no space left on device"
  return f"cannot write {path}: {message}"


def _convert_video(video_id, entry, feature_source, name_to_id, report, feature_fps,
                   frames_per_step, ignore_classes, length_tolerance, sequence_example,
                   trimmed=False):
  """Reads, checks and builds one video's SequenceExample; None when the video is skipped."""
  import numpy as np

  if frames_per_step is not None:
    fps = annotations_lib.video_fps(entry)
    if fps is None:
      report.add("fps_missing", video_id, f"fps={entry.get('fps')!r}")
      return None
    rate = fps / float(frames_per_step)
  else:
    rate = float(feature_fps)
  try:
    video = feature_source.video(video_id)
    lengths = video.stream_lengths
    detail = ", ".join(f"{s}={n}" for s, n in lengths.items())
    if video.num_steps == 0:
      raise feature_readers.FeatureError("features_empty", f"{video.where}: no steps "
                                         f"({detail})")
    features = video.read(0, video.num_steps)
  except feature_readers.FeatureError as e:
    report.add(e.kind, video_id, e.message)
    return None
  num_steps = video.num_steps
  if len(set(lengths.values())) > 1:
    report.add("stream_length_trimmed", video_id, f"{detail} -> {num_steps}")

  duration = annotations_lib.video_duration(entry)
  if duration is None:
    duration = num_steps / rate
    report.add("duration_missing", video_id,
               f"duration={entry.get('duration')!r} -> {duration:.3f} s")
  else:
    expected = duration * rate
    if abs(num_steps - expected) > feature_readers.steps_tolerance(expected,
                                                               length_tolerance):
      report.add("length_inconsistent", video_id,
                 f"{num_steps} steps vs duration {duration} s x {rate:g} steps/s = "
                 f"{expected:.1f}")

  if trimmed or entry.get("trimmed", False):
    segments, names = annotations_lib.trimmed_segments(video_id, entry, duration, report,
                                                       ignore_classes)
    video_names = names
  else:
    segments, names = annotations_lib.clean_segments(video_id, entry, duration, report,
                                                     ignore_classes)
    video_names = annotations_lib.video_labels(video_id, entry, names, report,
                                               ignore_classes)
  if not names:
    report.add("video_labels_only" if video_names else "video_without_segments", video_id,
               ", ".join(video_names))
  labels = np.asarray([name_to_id[n] for n in names], np.int64)
  return sequence_example.make_sequence_example(
      video_id, duration, rate, features, segments, labels, names,
      video_labels=sorted(name_to_id[n] for n in video_names))


@cli.guard(program="create_tfrecord")
def main(argv):
  """CLI entry point: flags -> convert_dataset -> printed summary.

  The library's own errors (bad annotations, label map, features, flags, failed writes)
  print one line naming the file or flag and exit with status 2 instead of a traceback
  (tal_tf.utils.cli, also when another runner calls `main`)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  for required in ("annotations", "label_map", "output"):
    if not getattr(fv, required):
      raise app.UsageError(f"--{required} is required")
  if (fv.feature_fps is None) == (fv.frames_per_step is None):
    raise app.UsageError("give exactly one of --feature_fps or --frames_per_step")
  source = feature_source_from_flags(fv)
  summary = convert_dataset(
      annotations_path=fv.annotations, output_prefix=fv.output,
      label_map_path=fv.label_map, feature_source=source, subset=fv.subset or None,
      num_shards=fv.num_shards, feature_fps=fv.feature_fps,
      frames_per_step=fv.frames_per_step, ignore_classes=fv.ignore_classes,
      length_tolerance=fv.length_tolerance, summary_json=fv.summary_json,
      trimmed=fv.trimmed)
  print(summary.format())
  print(f"Summary JSON: {summary.summary_json}")
  if summary.num_written == 0:
    print("No video was converted: check the feature paths and the summary above.",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
