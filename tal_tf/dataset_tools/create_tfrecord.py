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

Output files: `<output>-00000-of-0000N.tfrecord`, ..., plus `<output>-summary.json` with the
counts and the per-video list of every data quirk met (also printed at the end).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

from tal_tf.data import label_map_util
from tal_tf.dataset_tools import annotations as annotations_lib
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import quirks


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
                      "<output>-summary.json).", flag_values=fv)


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
  spec = fv.hdf5_features
  if ":" in spec and not os.path.exists(spec):
    return feature_readers.Hdf5Source(feature_readers.parse_stream_paths(spec, "file"), dims)
  return feature_readers.Hdf5Source(spec, dims)


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
        f"Streams: {', '.join(f'{s}:{d}' for s, d in self.stream_dims.items())}; "
        f"{self.num_segments} segments; label map {self.label_map} "
        f"({'written' if self.label_map_written else 'read'}, {self.num_classes} classes).",
        "Data quirks:",
        self.report.format(),
    ]
    return "\n".join(lines)

  def to_dict(self):
    """JSON-ready dict (written to <output>-summary.json)."""
    return {
        "num_selected": self.num_selected, "num_written": self.num_written,
        "num_skipped": self.num_selected - self.num_written,
        "num_segments": self.num_segments, "subset": self.subset,
        "shards": self.shards, "stream_dims": dict(self.stream_dims),
        "label_map": self.label_map, "label_map_written": self.label_map_written,
        "num_classes": self.num_classes, "seconds": self.seconds,
        "skipped_videos": self.report.skipped_videos(), "quirks": self.report.to_dict(),
    }


def _steps_tolerance(length_tolerance, steps):
  # A 2-step floor: extractors that drop a final partial window lose a step or two.
  return max(2.0, length_tolerance * steps)


def convert_dataset(annotations_path, output_prefix, label_map_path, feature_source,
                    subset=None, num_shards=1, feature_fps=None, frames_per_step=None,
                    ignore_classes=(), length_tolerance=0.1, summary_json=None,
                    progress_every_seconds=10.0, progress_stream=sys.stderr):
  """Converts one subset into sharded TFRecords; returns a ConversionSummary.

  Videos are written in sorted id order, round-robin over shards. Quirks (see
  quirks.QUIRK_KINDS) are handled, counted and listed; videos with unusable features are
  skipped. Exactly one of feature_fps / frames_per_step must be given.
  """
  import tensorflow as tf  # Deferred so `--help` and flag errors stay fast.
  from tal_tf.data import sequence_example

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

  database = annotations_lib.load_database(annotations_path)
  video_ids = annotations_lib.select_videos(database, subset, annotations_path)
  items, label_map_written = resolve_label_map(database, video_ids, annotations_path,
                                               label_map_path, ignore_classes)
  name_to_id = {it.name: it.id for it in items}

  stream_dims = feature_source.prepare(video_ids)
  report = quirks.QuirkReport()
  out_dir = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(out_dir, exist_ok=True)
  paths = shard_paths(output_prefix, int(num_shards))
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  progress = Progress(len(video_ids), progress_every_seconds, progress_stream)
  num_written = 0
  num_segments = 0
  try:
    for index, video_id in enumerate(video_ids):
      entry = database[video_id]
      example = _convert_video(video_id, entry, feature_source, name_to_id, report,
                               feature_fps, frames_per_step, ignore_classes,
                               length_tolerance, sequence_example)
      if example is not None:
        writers[num_written % len(writers)].write(example.SerializeToString())
        num_written += 1
        num_segments += len(example.context.feature["segment/label"].int64_list.value)
      progress.update(index + 1, num_written)
  finally:
    for w in writers:
      w.close()

  summary = ConversionSummary(
      num_selected=len(video_ids), num_written=num_written, num_segments=num_segments,
      subset=subset or "", shards=paths, output_prefix=output_prefix,
      stream_dims=stream_dims, label_map=label_map_path,
      label_map_written=label_map_written,
      num_classes=label_map_util.get_num_classes(items),
      seconds=time.time() - start_time, report=report)
  summary_path = summary_json or f"{output_prefix}-summary.json"
  with open(summary_path, "w", encoding="utf-8") as f:
    json.dump(summary.to_dict(), f, indent=2, sort_keys=True)
  summary.summary_json = summary_path
  return summary


def _convert_video(video_id, entry, feature_source, name_to_id, report, feature_fps,
                   frames_per_step, ignore_classes, length_tolerance, sequence_example):
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
    features = feature_source.read(video_id)
  except feature_readers.FeatureError as e:
    report.add(e.kind, video_id, e.message)
    return None

  lengths = {s: v.shape[0] for s, v in features.items()}
  shortest, longest = min(lengths.values()), max(lengths.values())
  if shortest != longest:
    detail = ", ".join(f"{s}={n}" for s, n in lengths.items())
    if longest - shortest > _steps_tolerance(length_tolerance, longest):
      report.add("stream_length_mismatch", video_id, detail)
      return None
    report.add("stream_length_trimmed", video_id, f"{detail} -> {shortest}")
    features = {s: v[:shortest] for s, v in features.items()}
  num_steps = shortest

  duration = annotations_lib.video_duration(entry)
  if duration is None:
    duration = num_steps / rate
    report.add("duration_missing", video_id,
               f"duration={entry.get('duration')!r} -> {duration:.3f} s")
  else:
    expected = duration * rate
    if abs(num_steps - expected) > _steps_tolerance(length_tolerance, expected):
      report.add("length_inconsistent", video_id,
                 f"{num_steps} steps vs duration {duration} s x {rate:g} steps/s = "
                 f"{expected:.1f}")

  segments, names = annotations_lib.clean_segments(video_id, entry, duration, report,
                                                   ignore_classes)
  if not len(names):
    report.add("video_without_segments", video_id)
  labels = np.asarray([name_to_id[n] for n in names], np.int64)
  return sequence_example.make_sequence_example(
      video_id, duration, rate, features, segments, labels, names)


def main(argv):
  """CLI entry point: flags -> convert_dataset -> printed summary."""
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
      annotations_path=fv.annotations, output_prefix=fv.output, label_map_path=fv.label_map,
      feature_source=source, subset=fv.subset or None, num_shards=fv.num_shards,
      feature_fps=fv.feature_fps, frames_per_step=fv.frames_per_step,
      ignore_classes=fv.ignore_classes, length_tolerance=fv.length_tolerance,
      summary_json=fv.summary_json)
  print(summary.format())
  print(f"Summary JSON: {summary.summary_json}")
  if summary.num_written == 0:
    print("No video was converted: check the feature paths and the summary above.",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
