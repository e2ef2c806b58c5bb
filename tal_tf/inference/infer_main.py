r"""Detects actions in feature files and writes a results JSON (ActivityNet format).

From an exported SavedModel (a version directory or a TF Serving base path, newest version):

  python -m tal_tf.inference.infer_main --saved_model_dir=serving/tal_net \
      --features=rgb:feats/rgb,flow:feats/flow --feature_fps=0.625 \
      --output=results.json

From a pipeline config and a training checkpoint (no export needed):

  python -m tal_tf.inference.infer_main --pipeline_config=configs/x.config \
      --checkpoint=runs/x --tfrecords='data/thumos14_test.tfrecord-*' --output=results.json

A model reading frames (e.g. S-CNN with the C3D backbone) takes --video alone: each video is
decoded at the frame rate and size recorded in its model_info.json (--frame_rate overrides).
A model reading feature streams and a frames stream (ETP with the frame Actionness Network)
takes a feature source and --video, matched by video id (a video lacking either part is
skipped, named on stderr); each feature window gets the frames of its time span, with window
starts kept on whole frames (tal_tf/inference/windowing.py):

  python -m tal_tf.inference.infer_main --saved_model_dir=serving/etp \
      --features=rgb:feats/rgb,flow:feats/flow --feature_fps=0.625 --video=videos/ \
      --output=results.json

From raw video (a file or a folder), with the extractor the training features were made
with (feature_extractor.json, written by tal_tf.dataset_tools.extract_features), and a
picture of the detections over each video's time axis:

  python -m tal_tf.inference.infer_main --saved_model_dir=serving/tal_net \
      --video=clip.mp4 --feature_extractor=features/feature_extractor.json \
      --output=results.json --timeline_png=timeline.png

Inputs: `--features` (one .npy directory per stream, read window by window), `--hdf5_features` (one
file of [T, sum(D)] datasets split in model stream order, or `rgb:a.h5,flow:b.h5`), or
`--tfrecords` (converter output; feature_fps is read from the records). Videos longer than
`--window_steps` (default: export_config.inference_window_steps of the model's config) are
run in windows overlapping by `--window_overlap` and merged by per-class NMS, so memory
stays bounded for multi-hour videos. Output: {"results": {video_id: [{"segment": [s, e],
"label": name, "score": p}]}}; `--proposals_output` also writes the class-agnostic
proposals (for AR@AN). Videos whose features are unusable are skipped and listed on stderr.

The feature rate is checked before any detection: postprocessing turns steps into seconds
with the rate given, and the network's anchors are in steps, so a rate (--feature_fps, each
record's video/feature_fps, --frame_rate) outside the rates the model was trained on
(model_info.json "training_feature_fps", or the checkpoint's training_feature_fps.json)
widened by a factor 1.25 stops with one line naming the value, the training range and the
model; so does a video whose num_steps / rate disagrees with its known duration (records'
video/duration, the decoded --video of a feature + frames model) beyond --length_tolerance.
--allow_feature_fps_mismatch turns both into warnings. A model exported from a run that
predates the record is not checked (said once).
"""

import json
import os
import sys

from absl import app
from absl import flags

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def define_flags(flag_values=flags.FLAGS):
  """Defines the inference CLI's flags on `flag_values` (global FLAGS by default)."""
  fv = flag_values
  flags.DEFINE_string("saved_model_dir", None, "Exported SavedModel (version dir or TF "
                      "Serving base path: the newest version is used).", flag_values=fv)
  flags.DEFINE_string("pipeline_config", None, "Pipeline config (with --checkpoint, instead "
                      "of --saved_model_dir).", flag_values=fv)
  flags.DEFINE_string("checkpoint", None, "Training model_dir or checkpoint prefix.",
                      flag_values=fv)
  flags.DEFINE_string("config_override", None, "Text proto merged over --pipeline_config.",
                      flag_values=fv)
  flags.DEFINE_string("features", None, "Per-stream .npy directories 'rgb:DIR,flow:DIR' of "
                      "<video_id>.npy [T, D].", flag_values=fv)
  flags.DEFINE_string("hdf5_features", None, "HDF5 file of /<video_id> [T, sum(D)] datasets "
                      "(model stream order), or 'rgb:a.h5,flow:b.h5'.", flag_values=fv)
  flags.DEFINE_list("tfrecords", None, "SequenceExample TFRecord file patterns.",
                    flag_values=fv)
  flags.DEFINE_string("video", None, "A video file or a folder of videos (decoded and "
                      "featurized with --feature_extractor).", flag_values=fv)
  flags.DEFINE_string("feature_extractor", None, "feature_extractor.json written by "
                      "extract_features beside the training features (with --video; not for "
                      "a model reading frames, which gets the decoded frames).",
                      flag_values=fv)
  flags.DEFINE_float("frame_rate", None, "With --video and a model reading frames: frames "
                     "per second to decode at (default: the rate in model_info.json).",
                     flag_values=fv)
  flags.DEFINE_string("timeline_png", None, "Optional PNG of the detections over each "
                      "video's time axis (with the ground truth of --annotations if given).",
                      flag_values=fv)
  flags.DEFINE_float("feature_fps", None, "Feature steps per second (--features and "
                     "--hdf5_features; TFRecords carry their own). Checked against the rates "
                     "the model was trained on (model_info.json training_feature_fps): a "
                     "rate outside [min / 1.25, max * 1.25] is an error.", flag_values=fv)
  from tal_tf.utils import feature_rates  # pylint: disable=g-import-not-at-top
  feature_rates.define_check_flags(
      fv, "--feature_fps, a record's video/feature_fps, --frame_rate",
      "records' video/duration; the video of --video with a feature source")
  flags.DEFINE_string("annotations", None, "Annotation JSON; with --subset, only that "
                      "subset's videos are processed.", flag_values=fv)
  flags.DEFINE_string("subset", None, "Subset of --annotations to process (case-insensitive, "
                      "e.g. 'test').", flag_values=fv)
  flags.DEFINE_list("video_ids", None, "Only these videos (default: all found).",
                    flag_values=fv)
  flags.DEFINE_string("output", None, "Results JSON to write.", flag_values=fv)
  flags.DEFINE_string("proposals_output", None, "Optional proposals JSON (no labels).",
                      flag_values=fv)
  flags.DEFINE_string("label_map", None, "Label map for class names (default: the one "
                      "exported beside the model, else the config's); must name exactly the "
                      "model's class ids.", flag_values=fv)
  flags.DEFINE_integer("window_steps", None, "Window length in feature steps (0 = whole "
                       "video; default export_config.inference_window_steps).", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_float("window_overlap", None, "Overlap fraction of consecutive windows "
                     "(default export_config.inference_window_overlap).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 1, "Windows per model call.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("max_detections", None, "Detections per video (default: the model's).",
                       flag_values=fv)
  flags.DEFINE_float("nms_iou_threshold", None, "tIoU of the per-class NMS merging windows "
                     "(default: the config's second-stage NMS threshold).", flag_values=fv)


def load_detector(fv):
  """Detector from --saved_model_dir or --pipeline_config + --checkpoint."""
  from tal_tf.inference import inference_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  if bool(fv.saved_model_dir) == bool(fv.pipeline_config):
    raise app.UsageError("give exactly one of --saved_model_dir or --pipeline_config "
                         "(+ --checkpoint)")
  if fv.saved_model_dir:
    if fv.checkpoint or fv.config_override:
      raise app.UsageError("--checkpoint / --config_override go with --pipeline_config, not "
                           "--saved_model_dir")
    return inference_lib.SavedModelDetector(fv.saved_model_dir)
  if not fv.checkpoint:
    raise app.UsageError("--pipeline_config needs --checkpoint")
  config = config_util.load_pipeline_config(fv.pipeline_config, fv.config_override)
  detector = inference_lib.CheckpointDetector(config, fv.checkpoint, fv.max_detections)
  label_map = detector.label_map_path
  if label_map and not os.path.isabs(label_map) and not os.path.isfile(label_map):
    # An exported pipeline.config names its label map relative to itself.
    beside = os.path.join(os.path.dirname(os.path.abspath(fv.pipeline_config)), label_map)
    if os.path.isfile(beside):
      detector.label_map_path = beside
  return detector


def selected_video_ids(fv):
  """--video_ids, narrowed to --subset of --annotations when given (None = all found)."""
  # Other CLIs (e.g. the serving client) reuse feature_source without these two flags.
  annotations = getattr(fv, "annotations", None)
  subset = getattr(fv, "subset", None)
  if bool(annotations) != bool(subset):
    raise app.UsageError("--annotations and --subset go together")
  ids = list(fv.video_ids) if fv.video_ids else None
  if annotations:
    from tal_tf.evaluation import io as eval_io  # pylint: disable=g-import-not-at-top
    # Raises EvaluationFormatError naming the file and the subsets present if none match.
    in_subset = sorted(eval_io.load_annotations(annotations, subset=subset))
    ids = in_subset if ids is None else [v for v in ids if v in set(in_subset)]
  return ids


def feature_source(fv, stream_dims):
  """The feature source named by exactly one of --features / --hdf5_features / --tfrecords
  (tal_tf.dataset_tools.feature_readers.open_source) / --video; for a model reading feature
  streams and a frames stream, one feature source plus --video (MixedVideoSource). A bad
  choice is a usage error."""
  from tal_tf.dataset_tools import feature_readers  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import inference_lib  # pylint: disable=g-import-not-at-top
  given = [n for n in ("features", "hdf5_features", "tfrecords", "video")
           if getattr(fv, n, None)]
  if inference_lib.side_stream(stream_dims) is not None:
    return _mixed_source(fv, stream_dims, given)
  from tal_tf.core import stream_spec  # pylint: disable=g-import-not-at-top
  if stream_spec.has_frames(stream_dims) and given != ["video"]:
    extra = [f"--{n}" for n in given if n != "video"]
    raise app.UsageError(
        f"this model reads only frames (stream {next(iter(stream_dims))!r}): give --video "
        "alone (decoded at the model's frame rate and size)"
        + (f", not {', '.join(extra)}" if extra else ""))
  if len(given) != 1:
    raise app.UsageError("give exactly one of --features, --hdf5_features, --tfrecords or "
                         "--video")
  video_ids = selected_video_ids(fv)
  if given == ["video"]:
    return _video_source(fv, stream_dims, video_ids)
  try:
    return feature_readers.open_source(
        stream_dims, features=fv.features, hdf5_features=fv.hdf5_features,
        tfrecords=fv.tfrecords, feature_fps=fv.feature_fps, video_ids=video_ids)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def _mixed_source(fv, stream_dims, given):
  """Features of one of --features / --hdf5_features / --tfrecords matched by video id with
  the frames of --video (video_source.MixedVideoSource)."""
  from tal_tf.dataset_tools import feature_readers  # pylint: disable=g-import-not-at-top
  from tal_tf.core import stream_spec  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import video_source  # pylint: disable=g-import-not-at-top
  frames = [s for s, d in stream_dims.items() if stream_spec.is_frames(d)]
  if "video" not in given or len(given) != 2:
    raise app.UsageError(f"this model reads feature streams and the frames stream {frames[0]!r}: "
                         "give one of --features, --hdf5_features or --tfrecords and --video")
  if getattr(fv, "feature_extractor", None):
    raise app.UsageError("--feature_extractor: this model reads its features from the feature "
                         "source and its frames from --video")
  video_ids = selected_video_ids(fv)
  feature_dims = {s: d for s, d in stream_dims.items() if not stream_spec.is_frames(d)}
  try:
    features = feature_readers.open_source(
        feature_dims, features=fv.features, hdf5_features=fv.hdf5_features,
        tfrecords=fv.tfrecords, feature_fps=fv.feature_fps, video_ids=video_ids)
    return video_source.MixedVideoSource(features, fv.video, stream_dims,
                                         fps=getattr(fv, "frame_rate", None),
                                         video_ids=video_ids)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def _video_source(fv, stream_dims, video_ids):
  """VideoSource of --video featurized by --feature_extractor, or, for a model reading
  frames, its decoded frames (FrameVideoSource)."""
  from tal_tf.core import stream_spec  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import video_source  # pylint: disable=g-import-not-at-top
  from tal_tf.video import feature_extraction  # pylint: disable=g-import-not-at-top
  if stream_spec.has_frames(stream_dims):
    if fv.feature_extractor:
      raise app.UsageError("--feature_extractor: this model reads frames (no features)")
    try:
      return video_source.FrameVideoSource(fv.video, stream_dims,
                                           fps=getattr(fv, "frame_rate", None),
                                           video_ids=video_ids)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  if not fv.feature_extractor:
    raise app.UsageError("--video needs --feature_extractor (feature_extractor.json)")
  extractor = feature_extraction.FeatureExtractor.from_spec(fv.feature_extractor)
  return video_source.VideoSource(fv.video, extractor, stream_dims, video_ids)


def reads_frames_only(stream_dims):
  """True for a model reading frames alone (its rate is the frame rate, not --feature_fps)."""
  from tal_tf.core import stream_spec  # pylint: disable=g-import-not-at-top
  return all(stream_spec.is_frames(d) for d in stream_dims.values())


def rate_origin(fv, stream_dims):
  """Video -> where its rate comes from, for the rate check's message."""
  if reads_frames_only(stream_dims):
    flag = "--frame_rate" if getattr(fv, "frame_rate", None) else \
        "the frame rate of model_info.json (--frame_rate)"
    return lambda video: flag
  if fv.tfrecords:
    return lambda video: f"video/feature_fps of {video.where}"
  if fv.feature_fps is not None:
    return lambda video: "--feature_fps"
  if fv.video and fv.feature_extractor:
    return lambda video: f"the feature rate of --feature_extractor {fv.feature_extractor}"
  return lambda video: f"the feature rate of video {video.video_id}"


def run(fv):
  """Runs inference as configured by parsed flags; returns the InferenceResult."""
  from tal_tf.data import label_map_util  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import io as eval_io  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import inference_lib  # pylint: disable=g-import-not-at-top
  if not fv.output:
    raise app.UsageError("--output is required")
  detector = load_detector(fv)
  source = feature_source(fv, detector.stream_dims)
  # Before the work: a --label_map that is missing or not this model's is an error.
  id_to_name = label_map_util.id_to_name_if_exists(
      fv.label_map or detector.label_map_path,
      num_classes=(detector.model_info or {}).get("num_classes"),
      flag="--label_map" if fv.label_map else None)
  defaults = inference_lib.post_processing_defaults(detector)
  window_steps = defaults["window_steps"] if fv.window_steps is None else fv.window_steps
  overlap = defaults["window_overlap"] if fv.window_overlap is None else fv.window_overlap
  iou = defaults["nms_iou_threshold"] if fv.nms_iou_threshold is None else fv.nms_iou_threshold
  # Before the work: a rate far from the training rates gives wrong times, not an error.
  check = inference_lib.rate_check(detector, allow=fv.allow_feature_fps_mismatch,
                                   length_tolerance=fv.length_tolerance)
  if fv.feature_fps is not None and not reads_frames_only(detector.stream_dims):
    check.check_rate(fv.feature_fps, "--feature_fps")
  result = inference_lib.run_inference(
      detector, check.videos(source, rate_origin(fv, detector.stream_dims)),
      window_steps=window_steps, window_overlap=overlap,
      batch_size=fv.batch_size, nms_iou_threshold=iou,
      proposal_nms_iou_threshold=defaults["proposal_nms_iou_threshold"],
      max_detections=fv.max_detections, max_proposals=defaults["max_proposals"],
      progress_every=100)
  results = inference_lib.to_results(result.detections, id_to_name)
  eval_io.write_results(fv.output, results)
  if fv.timeline_png and results:
    from tal_tf.inference import video_source  # pylint: disable=g-import-not-at-top
    groundtruth = None
    if getattr(fv, "annotations", None):
      groundtruth = eval_io.load_annotations(fv.annotations, subset=fv.subset)
    video_source.write_timeline_png(fv.timeline_png, results,
                                    getattr(source, "durations", None),
                                    groundtruth=groundtruth)
  if fv.proposals_output and not detector.model_info.get("has_proposals", True):
    raise app.UsageError("--proposals_output: this model has no proposals")
  if fv.proposals_output:
    eval_io.write_results(fv.proposals_output, {
        v: dict(segments=p["segments"], scores=p["scores"], labels=None)
        for v, p in result.proposals.items()})
  return result


def main(argv):
  """absl entry point: runs inference, prints a summary; exit code 1 if no video."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = run(flags.FLAGS)
  stats = result.stats
  print(f"{len(result.detections)} videos -> {flags.FLAGS.output} "
        f"({stats.get('windows', 0)} windows in {stats.get('batches', 0)} batches, "
        f"{stats.get('seconds', 0.0):.1f} s)")
  if stats.get("empty_videos"):
    print(f"{stats['empty_videos']} videos have no feature steps (empty feature files?): "
          "written with no detections", file=sys.stderr)
  if stats.get("frame_unaligned_videos"):
    print(f"{stats['frame_unaligned_videos']} videos: frame and feature rates without "
          "whole-frame window starts; each window got the frames nearest its span (off by at "
          "most half a frame)", file=sys.stderr)
  if result.skipped:
    print(json.dumps({"skipped": result.skipped}, indent=1), file=sys.stderr)
  return 0 if result.detections else 1


if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
