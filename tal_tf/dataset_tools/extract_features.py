r"""Extracts per-snippet features from a folder of videos: <output>/<stream>/<video_id>.npy.

Each video becomes float32 [T, D] per stream (tal_tf/video/feature_extraction.py): frames
decoded at --fps, snippets of --snippet_frames frames every --snippet_stride frames, so
T = ceil(frames / stride) at fps / stride steps per second. The output folder is ready for

  python -m tal_tf.dataset_tools.create_tfrecord --features=rgb:OUT/rgb,flow:OUT/flow \
      --feature_fps=<printed feature_fps> ...

and holds feature_extractor.json, the exact settings (give it to
`infer_main --video=... --feature_extractor=OUT/feature_extractor.json`).

Examples:
  # Model Garden ResNet-50 (ImageNet checkpoint you downloaded) on rgb + DIS flow images,
  # 16-frame snippets at 10 fps (0.625 steps/s, as TAL-Net), 4 frames per snippet:
  python -m tal_tf.dataset_tools.extract_features --videos=videos/ --output=features/ \
      --fps=10 --snippet_frames=16 --frames_per_snippet=4 --streams=rgb,flow \
      --backbone=resnet --model_id=50 --backbone_checkpoint=ckpt/resnet50_imagenet \
      --flow_backbone_checkpoint=ckpt/resnet50_flow
  # Any image SavedModel [N, H, W, 3] in [0, 1] -> [N, D]:
  ... --backbone=saved_model --backbone_saved_model=hub_model/ --output_tensor=feature_vector

Resumable: a video whose outputs all exist (valid .npy headers) is skipped; outputs are
written under temporary names and renamed when complete. Unreadable videos are skipped and
listed with the reason. Progress with an ETA (from the videos' durations) goes to stderr.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

from tal_tf.utils import atomic_files
from tal_tf.video import decoding
from tal_tf.video import feature_extraction


def define_flags(flag_values=flags.FLAGS):
  """Defines the extractor's flags on `flag_values` (the global FLAGS by default)."""
  fv = flag_values
  flags.DEFINE_string("videos", None, "A video file or a directory of <video_id>.<ext>.",
                      flag_values=fv)
  flags.DEFINE_string("output", None, "Output directory: <output>/<stream>/<video_id>.npy.",
                      flag_values=fv)
  flags.DEFINE_list("video_ids", None, "Only these videos (default: all found).",
                    flag_values=fv)
  flags.DEFINE_list("streams", ["rgb"], "Streams to extract: rgb, flow.", flag_values=fv)
  flags.DEFINE_float("fps", 10.0, "Frames per second decoded.", flag_values=fv)
  flags.DEFINE_integer("snippet_frames", 16, "Frames per snippet (one feature step).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("snippet_stride", None, "Frames between snippet starts (default: "
                       "snippet_frames).", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("frames_per_snippet", None, "Frames fed to an image backbone per "
                       "snippet, uniformly sampled and averaged (default: all).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("input_size", 224, "Center crop fed to the backbone.", lower_bound=8,
                       flag_values=fv)
  flags.DEFINE_enum("flow_method", "dis", ["dis", "farneback"], "OpenCV optical flow.",
                    flag_values=fv)
  flags.DEFINE_float("flow_bound", 20.0, "Flow (pixels) mapped to the image range.",
                     flag_values=fv)
  flags.DEFINE_enum("backbone", "resnet", ["resnet", "saved_model"], "Backbone kind.",
                    flag_values=fv)
  flags.DEFINE_integer("model_id", 50, "Model Garden ResNet depth (18, 34, 50, 101, 152).",
                       flag_values=fv)
  flags.DEFINE_float("depth_multiplier", 1.0, "ResNet width multiplier (must match the "
                     "checkpoint).", flag_values=fv)
  flags.DEFINE_string("backbone_checkpoint", None, "Checkpoint (prefix or dir) of the rgb "
                      "ResNet.", flag_values=fv)
  flags.DEFINE_string("flow_backbone_checkpoint", None, "Checkpoint of the flow ResNet "
                      "(default: --backbone_checkpoint).", flag_values=fv)
  flags.DEFINE_bool("random_init", False, "Random ResNet weights (tests / smoke runs only: "
                    "the features mean nothing).", flag_values=fv)
  flags.DEFINE_string("backbone_saved_model", None, "SavedModel dir (--backbone=saved_model)"
                      " for rgb.", flag_values=fv)
  flags.DEFINE_string("flow_backbone_saved_model", None, "SavedModel dir for flow (default: "
                      "--backbone_saved_model).", flag_values=fv)
  flags.DEFINE_string("output_tensor", None, "SavedModel output to read (needed when it has "
                      "several).", flag_values=fv)
  flags.DEFINE_string("signature", "serving_default", "SavedModel signature.", flag_values=fv)
  flags.DEFINE_enum("backbone_input", "image", ["image", "clip"], "SavedModel input: frames "
                    "[N,H,W,3] or snippets [S,L,H,W,3].", flag_values=fv)
  flags.DEFINE_float("pixel_range", 1.0, "SavedModel pixels are scaled to [0, pixel_range].",
                     flag_values=fv)
  flags.DEFINE_integer("batch_snippets", 8, "Snippets per backbone call.", lower_bound=1,
                       flag_values=fv)


def spec_from_flags(fv):
  """The extractor spec (feature_extraction.FeatureExtractor.from_spec input) of the flags."""
  streams = {}
  for stream in fv.streams:
    if stream not in feature_extraction.STREAMS:
      raise app.UsageError(f"--streams: unknown stream {stream!r}; expected rgb and/or flow")
    if fv.backbone == "resnet":
      checkpoint = fv.backbone_checkpoint
      if stream == "flow" and fv.flow_backbone_checkpoint:
        checkpoint = fv.flow_backbone_checkpoint
      if bool(checkpoint) == bool(fv.random_init):
        raise app.UsageError("--backbone=resnet needs --backbone_checkpoint (see the README "
                             "for where to get weights), or --random_init for tests")
      streams[stream] = {"backbone": "resnet", "model_id": fv.model_id,
                         "depth_multiplier": fv.depth_multiplier,
                         "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
                         "random_init": bool(fv.random_init),
                         "seed": feature_extraction.STREAMS.index(stream)}
    else:
      directory = fv.backbone_saved_model
      if stream == "flow" and fv.flow_backbone_saved_model:
        directory = fv.flow_backbone_saved_model
      if not directory:
        raise app.UsageError("--backbone=saved_model needs --backbone_saved_model")
      streams[stream] = {"backbone": "saved_model",
                         "saved_model_dir": os.path.abspath(directory),
                         "output_tensor": fv.output_tensor, "signature": fv.signature,
                         "input_kind": fv.backbone_input, "pixel_range": fv.pixel_range}
  return feature_extraction.spec_for(
      streams, fps=fv.fps, snippet_frames=fv.snippet_frames, snippet_stride=fv.snippet_stride,
      frames_per_snippet=fv.frames_per_snippet, input_size=fv.input_size,
      flow_method=fv.flow_method, flow_bound=fv.flow_bound, batch_snippets=fv.batch_snippets)


def output_paths(output_dir, streams, video_id):
  """{stream: <output_dir>/<stream>/<video_id>.npy}."""
  return {s: os.path.join(output_dir, s, video_id + ".npy") for s in streams}


def is_complete(paths, dims):
  """True when every path holds a readable 2-D .npy of the expected dim (resume check)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  for stream, path in paths.items():
    try:
      array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
      return False
    if array.ndim != 2 or array.shape[1] != dims[stream]:
      return False
  return True


def extract_videos(videos, output_dir, extractor, video_ids=None, progress_stream=sys.stderr,
                   progress_every_seconds=10.0):
  """Extracts every video of `videos` (file or directory) with `extractor` into output_dir;
  returns a summary dict (written, resumed, skipped {id: reason}, feature_fps, ...)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  files = decoding.list_videos(videos)
  if video_ids:
    missing = [v for v in video_ids if v not in files]
    if missing:
      raise ValueError(f"--video_ids {missing} have no video file in {videos!r}")
    files = {v: files[v] for v in video_ids}
  os.makedirs(output_dir, exist_ok=True)
  spec_path = os.path.join(output_dir, feature_extraction.SPEC_NAME)
  spec = extractor.spec()
  if os.path.isfile(spec_path):
    with open(spec_path, encoding="utf-8") as f:
      previous = json.load(f)
    if previous != json.loads(json.dumps(spec)):
      raise ValueError(f"{spec_path} was written with other settings; resume with the same "
                       "flags or use a new --output directory")
  else:
    with atomic_files.atomic_output(spec_path) as tmp:
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2, sort_keys=True)

  durations = {}
  skipped = {}
  for video_id, path in files.items():
    try:
      info = decoding.probe(path)
      durations[video_id] = decoding.announced_duration(info) or 1.0
    except decoding.VideoError as e:
      skipped[video_id] = f"{e.kind}: {e.message}"
  total_seconds = sum(durations.values())
  start = time.time()
  last_print = start
  done_seconds = 0.0
  written, resumed, snippets = [], [], 0
  for video_id, path in files.items():
    if video_id in skipped:
      continue
    paths = output_paths(output_dir, extractor.backbones, video_id)
    if is_complete(paths, extractor.stream_dims):
      resumed.append(video_id)
      total_seconds -= durations[video_id]
      continue
    try:
      features = extractor.extract(path)
    except decoding.VideoError as e:
      skipped[video_id] = f"{e.kind}: {e.message}"
      total_seconds -= durations[video_id]
      continue
    with atomic_files.atomic_outputs(list(paths.values())) as temps:
      for (stream, _), tmp in zip(paths.items(), temps):
        with open(tmp, "wb") as f:
          np.save(f, features[stream])
    written.append(video_id)
    snippets += next(iter(features.values())).shape[0]
    done_seconds += durations[video_id]
    now = time.time()
    if progress_stream is not None and now - last_print >= progress_every_seconds:
      last_print = now
      rate = done_seconds / max(now - start, 1e-9)
      eta = (total_seconds - done_seconds) / max(rate, 1e-9)
      print(f"[extract_features] {len(written) + len(resumed)}/{len(files)} videos, "
            f"{snippets / (now - start):.1f} snippets/s, {rate:.1f} video-s/s, "
            f"ETA {eta:.0f} s", file=progress_stream, flush=True)
  return {"written": written, "resumed": resumed, "skipped": skipped,
          "num_videos": len(files), "snippets": snippets, "seconds": time.time() - start,
          "feature_fps": extractor.feature_fps, "stream_dims": dict(extractor.stream_dims),
          "spec": spec_path}


def main(argv):
  """CLI entry point."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  for required in ("videos", "output"):
    if not getattr(fv, required):
      raise app.UsageError(f"--{required} is required")
  spec = spec_from_flags(fv)
  extractor = feature_extraction.FeatureExtractor.from_spec(spec)
  summary = extract_videos(fv.videos, fv.output, extractor, fv.video_ids)
  dirs = ",".join(f"{s}:{os.path.join(fv.output, s)}" for s in extractor.stream_dims)
  print(f"Extracted {len(summary['written'])} videos ({len(summary['resumed'])} already "
        f"done, {len(summary['skipped'])} skipped) in {summary['seconds']:.1f} s: "
        f"{summary['snippets']} snippets; dims {summary['stream_dims']}; feature_fps "
        f"{summary['feature_fps']:g}.")
  print(f"Next: create_tfrecord --features={dirs} --feature_fps={summary['feature_fps']:g}")
  if summary["skipped"]:
    print(json.dumps({"skipped": summary["skipped"]}, indent=1), file=sys.stderr)
  return 0 if summary["written"] or summary["resumed"] else 1


if __name__ == "__main__":
  define_flags()
  app.run(main)
