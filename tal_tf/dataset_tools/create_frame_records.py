r"""Converts annotated videos into sharded TFRecords of JPEG frames (SequenceExamples).

Each video is decoded as a stream (tal_tf/video/decoding.py), resampled to `--fps`,
resized, JPEG-encoded and written as one or more SequenceExamples with the feature list
`frames/jpeg` and the same context as feature records (id, duration, fps, segments, labels,
video-level labels; see SequenceExampleFields). A long video is split into consecutive
records of at most `--max_frames_per_record` frames (context `video/first_frame`,
`video/num_frames`), so neither this writer nor the tf.data reader ever holds more than one
record's JPEGs: a 2-hour video converts in bounded memory.

Examples:
  # S-CNN / C3D input: 171x128 at 25 fps.
  python -m tal_tf.dataset_tools.create_frame_records --videos=videos/ \
      --annotations=annotations.json --subset=validation --label_map=label_map.pbtxt \
      --fps=25 --size=171x128 --output=records/frames_val --num_shards=4
  # ResNet actionness input (ETP): short side 256 at 10 fps.
  ... --fps=10 --short_side=256
  # Trimmed clips (e.g. UCF101 for ETP's Actionness Network): each video is one action,
  # segment [0, duration] labelled with its video-level class(es):
  ... --trimmed --fps=10 --size=341x256

Videos are found as <videos>/<video_id>.<ext> (mp4, avi, mkv, webm, mov, ...). Missing,
empty, unreadable, stream-less, corrupt and truncated files are skipped and counted, with
the file and the reason, in the printed summary and <output>.summary.json. Shards are
written under temporary names and renamed when the run succeeds.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

from tal_tf.dataset_tools import annotations as annotations_lib
from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import quirks
from tal_tf.utils import atomic_files
from tal_tf.video import decoding


def define_flags(flag_values=flags.FLAGS):
  """Defines the frame converter's flags on `flag_values` (the global FLAGS by default)."""
  fv = flag_values
  flags.DEFINE_string("videos", None, "Directory of <video_id>.<ext> video files.",
                      flag_values=fv)
  flags.DEFINE_string("annotations", None, "ActivityNet-style annotation JSON.", flag_values=fv)
  flags.DEFINE_string("subset", "", "Subset(s) to convert, comma separated, case-insensitive; "
                      "empty = all videos.", flag_values=fv)
  flags.DEFINE_string("label_map", None, "Label map text proto: read if it exists, else "
                      "written from the JSON's classes.", flag_values=fv)
  flags.DEFINE_string("output", None, "Output prefix: <output>-SSSSS-of-NNNNN.tfrecord.",
                      flag_values=fv)
  flags.DEFINE_integer("num_shards", 1, "Number of output shards.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_float("fps", 25.0, "Frames per second of the records.", flag_values=fv)
  flags.DEFINE_string("size", None, "Frame size WIDTHxHEIGHT (e.g. 171x128 for C3D).",
                      flag_values=fv)
  flags.DEFINE_integer("short_side", None, "Resize keeping the aspect ratio to this shorter "
                       "side (e.g. 256 for ResNet); excludes --size.", flag_values=fv)
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality (1-100).", lower_bound=1,
                       upper_bound=100, flag_values=fv)
  flags.DEFINE_integer("max_frames_per_record", 1500, "Longer videos are split into "
                       "consecutive records of at most this many frames.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_list("ignore_classes", [], "Classes whose segments are dropped.",
                    flag_values=fv)
  flags.DEFINE_boolean("trimmed", False, "Every video is a trimmed clip whose whole extent "
                       "is its action: one segment [0, duration] per video-level label "
                       "(per video: \"trimmed\": true in the JSON).", flag_values=fv)
  flags.DEFINE_float("length_tolerance", 0.1, "Relative tolerance (2-frame floor) of the "
                     "decoded length vs the annotated duration x fps (reported, kept).",
                     flag_values=fv)


def encode_jpeg(image, quality=90):
  """uint8 RGB [H, W, 3] -> JPEG bytes (OpenCV's libjpeg; BGR order on its side)."""
  import cv2  # pylint: disable=g-import-not-at-top
  ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
  return data.tobytes()


def video_records(video_id, path, duration, fps, segments, labels, label_texts, size=None,
                  short_side=None, jpeg_quality=90, max_frames_per_record=1500):
  """Decodes one video and returns its serialized frame records (list, in frame order); for
  short videos and tests (long videos: iterate `iter_video_records`)."""
  records = iter_video_records(video_id, path, duration, fps, segments, labels, label_texts,
                               size, short_side, jpeg_quality, max_frames_per_record)
  return [r for r, _ in records]


def iter_video_records(video_id, path, duration, fps, segments, labels, label_texts,
                       size=None, short_side=None, jpeg_quality=90,
                       max_frames_per_record=1500, num_frames=None):
  """Yields (serialized frame record, its frame count) of one video as records fill (see
  the module doc).

  duration: seconds written to the context (the annotation's); num_frames: the video's
  total frames at `fps` for the context (default ceil(duration * fps)). Raises
  decoding.VideoError for a bad file (possibly after some records were yielded).
  """
  from tal_tf.data import sequence_example  # pylint: disable=g-import-not-at-top
  if num_frames is None:
    num_frames = decoding.num_resampled_frames(duration, fps)
  chunk, first, shape = [], 0, (0, 0)

  def record():
    return sequence_example.make_frame_sequence_example(
        video_id, duration, fps, chunk, segments, labels, label_texts, first_frame=first,
        num_frames=num_frames, height=shape[0], width=shape[1]).SerializeToString()

  for frame in decoding.iter_frames(path, fps=fps, size=size, short_side=short_side):
    shape = frame.image.shape
    chunk.append(encode_jpeg(frame.image, jpeg_quality))
    if len(chunk) == max_frames_per_record:
      yield record(), len(chunk)
      first += len(chunk)
      chunk = []
  if chunk:
    yield record(), len(chunk)


def convert_videos(videos_dir, annotations_path, output_prefix, label_map_path, subset=None,
                   num_shards=1, fps=25.0, size=None, short_side=None, jpeg_quality=90,
                   max_frames_per_record=1500, ignore_classes=(), length_tolerance=0.1,
                   progress_every_seconds=10.0, progress_stream=sys.stderr, trimmed=False):
  """Converts one subset's videos into sharded frame TFRecords; returns the summary dict
  (also written to <output_prefix>.summary.json). `trimmed`: every video is a trimmed clip
  (one segment [0, duration] per video-level label); "trimmed": true in the JSON does the
  same for one video."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  start_time = time.time()
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  if size is not None and short_side is not None:
    raise ValueError("give size or short_side, not both")
  ignore_classes = [c for c in ignore_classes if c]
  database = annotations_lib.load_database(annotations_path)
  report = quirks.QuirkReport()
  video_ids = annotations_lib.select_videos(database, subset, annotations_path, report)
  files = decoding.list_videos(videos_dir)
  items, label_map_written = create_tfrecord.resolve_label_map(
      database, video_ids, annotations_path, label_map_path, ignore_classes)
  name_to_id = {it.name: it.id for it in items}
  paths = create_tfrecord.shard_paths(output_prefix, int(num_shards))
  progress = create_tfrecord.Progress(len(video_ids), progress_every_seconds, progress_stream,
                                      name="create_frame_records")
  counts = dict(videos=0, records=0, frames=0, segments=0)
  with atomic_files.atomic_outputs(paths) as temps:
    writers = [tf.io.TFRecordWriter(t) for t in temps]
    try:
      for index, video_id in enumerate(video_ids):
        entry = database[video_id]
        path = files.get(video_id)
        if path is None:
          report.add("video_missing", video_id, f"no <id>.<ext> file in {videos_dir}")
        else:
          _convert_one(video_id, entry, path, writers, os.path.dirname(temps[0]), counts,
                       report, name_to_id, fps, size, short_side, jpeg_quality,
                       max_frames_per_record, ignore_classes, length_tolerance, np, trimmed)
        progress.update(index + 1, counts["videos"])
    finally:
      for w in writers:
        w.close()

  summary = {
      "num_selected": len(video_ids), "num_written": counts["videos"],
      "num_skipped": len(video_ids) - counts["videos"], "num_records": counts["records"],
      "num_frames": counts["frames"], "num_segments": counts["segments"],
      "subset": subset or "", "shards": paths, "fps": fps,
      "size": list(size) if size else None, "short_side": short_side,
      "label_map": label_map_path, "label_map_written": label_map_written,
      "trimmed": bool(trimmed),
      "seconds": time.time() - start_time, "skipped_videos": report.skipped_videos(),
      "quirks": report.to_dict()}
  summary_path = create_tfrecord.summary_path(output_prefix)
  with atomic_files.atomic_output(summary_path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  summary["summary_json"] = summary_path
  summary["report"] = report
  return summary


def _convert_one(video_id, entry, path, writers, writers_dir, counts, report, name_to_id, fps,
                 size, short_side, jpeg_quality, max_frames_per_record, ignore_classes,
                 length_tolerance, np, trimmed=False):
  """Decodes, checks and writes one video; counts a skip in `report` on a bad file."""
  try:
    info = decoding.probe(path)
  except decoding.VideoError as e:
    report.add(e.kind, video_id, e.message)
    return
  duration = annotations_lib.video_duration(entry)
  if duration is None:
    duration = decoding.announced_duration(info)
    report.add("duration_missing", video_id, f"duration={entry.get('duration')!r} -> "
               f"{duration:.3f} s from the video header")
    if not duration > 0:
      report.add("video_unreadable", video_id, f"{path}: header has no duration either")
      return
  if trimmed or entry.get("trimmed", False):
    segments, names = annotations_lib.trimmed_segments(video_id, entry, duration, report,
                                                       ignore_classes)
  else:
    segments, names = annotations_lib.clean_segments(video_id, entry, duration, report,
                                                     ignore_classes)
  labels = np.asarray([name_to_id[n] for n in names], np.int64)
  # Records are spooled to a temporary file until the whole video decoded, so a file that
  # fails part-way leaves nothing in the shards while memory stays bounded by one record.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spool = atomic_files.temp_name(writers_dir + "/spool.tfrecord")
  frames = num_records = 0
  try:
    with tf.io.TFRecordWriter(spool) as spool_writer:
      for record, n in iter_video_records(video_id, path, duration, fps, segments, labels,
                                          names, size, short_side, jpeg_quality,
                                          max_frames_per_record):
        spool_writer.write(record)
        frames += n
        num_records += 1
  except decoding.VideoError as e:
    report.add(e.kind, video_id, e.message)
    os.remove(spool)
    return
  try:
    if not len(names):
      report.add("video_without_segments", video_id)
    for record in tf.data.TFRecordDataset(spool).as_numpy_iterator():
      writers[counts["records"] % len(writers)].write(record)
      counts["records"] += 1
  finally:
    os.remove(spool)
  expected = duration * fps
  if abs(frames - expected) > max(2.0, length_tolerance * expected):
    report.add("length_inconsistent", video_id, f"{frames} frames decoded vs duration "
               f"{duration} s x {fps:g} fps = {expected:.1f}")
  counts["videos"] += 1
  counts["frames"] += frames
  counts["segments"] += len(names)


def main(argv):
  """CLI entry point: flags -> convert_videos -> printed summary."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  for required in ("videos", "annotations", "label_map", "output"):
    if not getattr(fv, required):
      raise app.UsageError(f"--{required} is required")
  if fv.size and fv.short_side:
    raise app.UsageError("give --size or --short_side, not both")
  try:
    size = decoding.parse_size(fv.size) if fv.size else None
  except ValueError as e:
    raise app.UsageError(f"--size: {e}") from None
  summary = convert_videos(
      fv.videos, fv.annotations, fv.output, fv.label_map, subset=fv.subset or None,
      num_shards=fv.num_shards, fps=fv.fps, size=size, short_side=fv.short_side,
      jpeg_quality=fv.jpeg_quality, max_frames_per_record=fv.max_frames_per_record,
      ignore_classes=fv.ignore_classes, length_tolerance=fv.length_tolerance,
      trimmed=fv.trimmed)
  print(f"Converted {summary['num_written']} of {summary['num_selected']} videos "
        f"(subset: {summary['subset'] or 'all'}) into {summary['num_records']} records, "
        f"{summary['num_frames']} frames at {fv.fps:g} fps, {len(summary['shards'])} shard(s) "
        f"{fv.output}-*, in {summary['seconds']:.1f} s.")
  print("Data quirks:")
  print(summary["report"].format())
  print(f"Summary JSON: {summary['summary_json']}")
  return 0 if summary["num_written"] else 1


if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
