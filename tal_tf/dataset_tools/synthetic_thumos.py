r"""The embedded default dataset: synthetic two-stream features on real THUMOS14 structure.

Video durations, segment times and classes come from the THUMOS14 annotation JSON shipped in
`tal_tf/dataset_tools/resources/thumos14.json`; only the features are synthetic. The output
is the exchange format users bring (annotations JSON + one .npy per video per stream), so
it is converted with the same `create_tfrecord` CLI as real data.

Signal model (per stream s of dim D, feature step t covering [t/fps, (t+1)/fps) seconds; all
pattern vectors are Gaussian with per-dimension RMS 1, drawn from `seed` alone so every video
subset shares them):
  x_s(t) = g(t) * 0.7 * B_s[k(t)]                           switching background
         + sum over actions i of class c, amplitude a_i ~ U(0.8, 1.2):
             a_i * w_i(t) * P_s,c(t - start_i)                  action pattern
           + 0.6 * a_i * pre_i(t) * Pre_s,c                    context before the action
           + 0.6 * a_i * post_i(t) * Post_s,c                  context after the action
         + V_s (per-video offset, N(0, 0.2^2))  + noise N(0, noise_std^2)
  * k(t): background state, switching to a random one of 8 states after exponential dwell
    times (mean 6 s, at least 1 s).
  * w_i(t): soft presence = sigmoid((tau - start) / 0.25 s) * sigmoid((end - tau) / 0.25 s),
    averaged over 4 sub-samples tau inside step t (so short actions give partial steps).
  * P_s,c: stream 0 ("appearance", e.g. rgb) is a static class vector A_c; other streams
    ("motion", e.g. flow) are 0.6 * M0_c + 0.8 * (cos(phi) M1_c + sin(phi) M2_c) with
    phi = 2 pi f_c (tau - start) and a class frequency f_c in [0.1, 0.4] Hz.
  * pre_i / post_i: ramps over L = clip(0.5 * (end - start), 1 s, 4 s) just before the start
    (rising toward it) and just after the end (falling away from it), soft-edged like w_i.
  * g(t) = 1 - 0.5 * max_i w_i(t): actions partly occlude the background.
Everything is deterministic given `seed` (per-video noise is seeded by seed and video id).

Example:
  python -m tal_tf.dataset_tools.synthetic_thumos --output_dir=/tmp/synth \
      --subset=validation,test --num_videos=20 --dims=rgb:64,flow:64 --feature_fps=2.0
writes /tmp/synth/annotations.json, /tmp/synth/label_map.pbtxt and
/tmp/synth/features/{rgb,flow}/<video_id>.npy.
"""

import collections
import json
import os
import zlib

import numpy as np

from tal_tf.utils import atomic_files

RESOURCES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")
THUMOS14_JSON = os.path.join(RESOURCES_DIR, "thumos14.json")
THUMOS14_LABEL_MAP = os.path.join(RESOURCES_DIR, "thumos14_label_map.pbtxt")

NUM_BACKGROUND_STATES = 8
BACKGROUND_AMPLITUDE = 0.7
BACKGROUND_MEAN_DWELL_S = 6.0
CONTEXT_AMPLITUDE = 0.6
BOUNDARY_SOFTNESS_S = 0.25
VIDEO_OFFSET_STD = 0.2
SUBSAMPLES_PER_STEP = 4


def _pattern(rng, count, dim):
  """[count, dim] Gaussian vectors rescaled to per-dimension RMS 1."""
  v = rng.standard_normal((count, dim))
  v *= np.sqrt(dim) / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  return v


class SignalModel:
  """The seeded pattern bank of the synthetic dataset (see module docstring)."""

  def __init__(self, class_names, stream_dims, seed=0, noise_std=0.8):
    """class_names: list of C names; stream_dims: ordered {stream: D}; first = appearance."""
    if not class_names:
      raise ValueError("class_names is empty")
    if not stream_dims:
      raise ValueError("stream_dims must name at least one stream")
    self.class_names = list(class_names)
    self.class_index = {n: i for i, n in enumerate(self.class_names)}
    self.stream_dims = collections.OrderedDict(stream_dims)
    self.seed = int(seed)
    self.noise_std = float(noise_std)
    num_classes = len(self.class_names)
    self.patterns = {}
    for k, (stream, dim) in enumerate(self.stream_dims.items()):
      # One generator per stream, keyed by (seed, stream name): adding a stream does not
      # change the patterns of the others.
      rng = np.random.default_rng([self.seed, zlib.crc32(stream.encode()), 1])
      self.patterns[stream] = {
          "action": _pattern(rng, num_classes, dim),
          "motion1": _pattern(rng, num_classes, dim),
          "motion2": _pattern(rng, num_classes, dim),
          "pre": _pattern(rng, num_classes, dim),
          "post": _pattern(rng, num_classes, dim),
          "background": _pattern(rng, NUM_BACKGROUND_STATES, dim),
          "is_motion": k > 0,
      }
    rng = np.random.default_rng([self.seed, 2])
    self.frequencies = rng.uniform(0.1, 0.4, size=num_classes)

  def num_steps(self, duration, feature_fps):
    """Feature steps of a video: round(duration * feature_fps), at least 1."""
    return max(1, int(round(float(duration) * float(feature_fps))))

  def video_features(self, video_id, duration, segments, labels, feature_fps):
    """-> {stream: float32 [T, D]} for one video.

    segments: [G, 2] seconds (clipped here to [0, duration] for the signal only);
    labels: G class names (names outside class_names raise ValueError).
    """
    fps = float(feature_fps)
    num_steps = self.num_steps(duration, fps)
    rng = np.random.default_rng([self.seed, zlib.crc32(video_id.encode()), 3])
    # Sub-sample times inside each step: [T, S].
    offsets = (np.arange(SUBSAMPLES_PER_STEP) + 0.5) / SUBSAMPLES_PER_STEP
    tau = (np.arange(num_steps)[:, None] + offsets[None, :]) / fps

    # Background state per step (switching at exponential dwell times).
    state = np.empty(num_steps, np.int64)
    t0, current = 0.0, rng.integers(NUM_BACKGROUND_STATES)
    step_start = np.arange(num_steps) / fps
    while t0 < num_steps / fps:
      dwell = max(1.0, rng.exponential(BACKGROUND_MEAN_DWELL_S))
      state[(step_start >= t0) & (step_start < t0 + dwell)] = current
      t0 += dwell
      current = (current + 1 + rng.integers(NUM_BACKGROUND_STATES - 1)) % NUM_BACKGROUND_STATES

    segments = np.asarray(segments, np.float64).reshape(-1, 2)
    amplitudes = rng.uniform(0.8, 1.2, size=len(segments))
    presences, pres, posts, phases, classes = [], [], [], [], []
    for (start, end), name in zip(segments, labels):
      if name not in self.class_index:
        raise ValueError(f"video {video_id}: class {name!r} is not one of the signal model's "
                         f"classes {self.class_names}")
      start, end = max(0.0, start), min(float(duration), end)
      c = self.class_index[name]
      edge = BOUNDARY_SOFTNESS_S
      presences.append((_sigmoid((tau - start) / edge) * _sigmoid((end - tau) / edge))
                       .mean(axis=1))
      span = float(np.clip(0.5 * max(end - start, 0.0), 1.0, 4.0))
      rise = np.clip((tau - (start - span)) / span, 0.0, 1.0)
      pres.append((rise * _sigmoid((start - tau) / edge)
                   * _sigmoid((tau - (start - span)) / edge)).mean(axis=1))
      fall = np.clip(((end + span) - tau) / span, 0.0, 1.0)
      posts.append((fall * _sigmoid((tau - end) / edge)
                    * _sigmoid(((end + span) - tau) / edge)).mean(axis=1))
      phases.append(2.0 * np.pi * self.frequencies[c] * (tau - start))
      classes.append(c)
    if presences:
      occlusion = 1.0 - 0.5 * np.max(np.stack(presences), axis=0)
    else:
      occlusion = np.ones(num_steps)

    out = collections.OrderedDict()
    for stream, dim in self.stream_dims.items():
      bank = self.patterns[stream]
      x = (BACKGROUND_AMPLITUDE * occlusion)[:, None] * bank["background"][state]
      for i, c in enumerate(classes):
        a = amplitudes[i]
        if bank["is_motion"]:
          cos = np.cos(phases[i]).mean(axis=1)
          sin = np.sin(phases[i]).mean(axis=1)
          pattern = (0.6 * bank["action"][c][None, :]
                     + 0.8 * (cos[:, None] * bank["motion1"][c][None, :]
                              + sin[:, None] * bank["motion2"][c][None, :]))
        else:
          pattern = bank["action"][c][None, :]
        x += a * presences[i][:, None] * pattern
        x += CONTEXT_AMPLITUDE * a * pres[i][:, None] * bank["pre"][c][None, :]
        x += CONTEXT_AMPLITUDE * a * posts[i][:, None] * bank["post"][c][None, :]
      x += VIDEO_OFFSET_STD * rng.standard_normal(dim)[None, :]
      x += self.noise_std * rng.standard_normal((num_steps, dim))
      out[stream] = x.astype(np.float32)
    return out


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def load_annotations(path=None):
  """Loads an annotation JSON (default: the shipped THUMOS14 copy) -> full JSON dict."""
  path = path or THUMOS14_JSON
  with open(path, "r", encoding="utf-8") as f:
    return json.load(f)


def select_videos(database, subsets=("validation", "test"), num_videos=None,
                  selection="spread"):
  """Picks `num_videos` ids per subset (case-insensitive); all when None/0.

  selection="first": the first N sorted ids. selection="spread" (default): N ids evenly
  spaced over the sorted list; THUMOS14's validation ids are grouped by class, so the first
  40 cover only 6 classes while 20 spread ids cover all 20.
  """
  if selection not in ("first", "spread"):
    raise ValueError(f"selection must be 'first' or 'spread', got {selection!r}")
  if isinstance(subsets, str):
    subsets = [s for s in subsets.split(",") if s.strip()]
  chosen = []
  for subset in subsets:
    ids = sorted(v for v, e in database.items()
                 if str(e.get("subset", "")).lower() == subset.strip().lower())
    if not ids:
      present = sorted({str(e.get("subset", "")) for e in database.values()})
      raise ValueError(f"subset {subset!r} has no videos; subsets present: {present}")
    if not num_videos or num_videos >= len(ids):
      chosen.extend(ids)
    elif selection == "first":
      chosen.extend(ids[:num_videos])
    else:
      picks = np.round(np.linspace(0, len(ids) - 1, num_videos)).astype(int)
      chosen.extend(ids[i] for i in picks)
  return chosen


def generate_dataset(output_dir, subsets=("validation", "test"), num_videos=None,
                     stream_dims=None, feature_fps=2.0, seed=0, noise_std=0.8,
                     annotations_path=None, frames_per_step=None, selection="spread"):
  """Writes the synthetic dataset in the exchange format; returns a dict of paths.

  Output: output_dir/annotations.json (the selected videos' real annotations, unchanged),
  output_dir/label_map.pbtxt (all classes of the source JSON, sorted, ids from 1),
  output_dir/features/<stream>/<video_id>.npy float32 [T, D] with
  T = round(duration * feature_fps). With `frames_per_step`, each video's rate is instead
  its JSON fps / frames_per_step (like a real extractor's frame stride; convert with
  --frames_per_step). Returns {'annotations', 'label_map', 'features': {stream: dir},
  'video_ids', 'feature_fps', 'frames_per_step', 'stream_dims'}.
  """
  from tal_tf.data import label_map_util  # Local import keeps this module numpy-only.

  if stream_dims is None:
    stream_dims = collections.OrderedDict([("rgb", 64), ("flow", 64)])
  if not float(feature_fps) > 0:
    raise ValueError(f"feature_fps must be > 0, got {feature_fps}")
  if frames_per_step is not None and not float(frames_per_step) > 0:
    raise ValueError(f"frames_per_step must be > 0, got {frames_per_step}")
  data = load_annotations(annotations_path)
  database = data["database"]
  class_names = sorted({a["label"] for e in database.values() for a in e["annotations"]})
  model = SignalModel(class_names, stream_dims, seed=seed, noise_std=noise_std)
  video_ids = select_videos(database, subsets, num_videos, selection)

  feature_dirs = collections.OrderedDict(
      (s, os.path.join(output_dir, "features", s)) for s in stream_dims)
  for d in feature_dirs.values():
    os.makedirs(d, exist_ok=True)
  for video_id in video_ids:
    entry = database[video_id]
    segments = [a["segment"] for a in entry["annotations"]]
    labels = [a["label"] for a in entry["annotations"]]
    rate = feature_fps
    if frames_per_step is not None:
      if not entry.get("fps"):
        raise ValueError(f"video {video_id} has no fps; frames_per_step needs it")
      rate = float(entry["fps"]) / float(frames_per_step)
    features = model.video_features(video_id, entry["duration"], segments, labels, rate)
    for stream, values in features.items():
      # Atomically: a full disk or a kill leaves whole feature files only (a truncated one
      # would be a converter quirk that the generator itself caused).
      with atomic_files.atomic_output(os.path.join(feature_dirs[stream],
                                                   video_id + ".npy")) as temp:
        with open(temp, "wb") as f:
          np.save(f, values, allow_pickle=False)

  out_json = {
      "version": (f"synthetic features on THUMOS14 annotations (tal_tf synthetic_thumos, "
                  f"seed={seed}, "
                  + (f"frames_per_step={frames_per_step}, " if frames_per_step
                     else f"feature_fps={feature_fps}, ")
                  + f"noise_std={noise_std}, "
                  f"dims={dict(stream_dims)})"),
      "database": {v: database[v] for v in video_ids},
  }
  annotations_out = os.path.join(output_dir, "annotations.json")
  atomic_files.write_text(annotations_out, json.dumps(out_json))
  label_map_out = os.path.join(output_dir, "label_map.pbtxt")
  label_map_util.write_label_map(label_map_out,
                                 label_map_util.items_from_class_names(class_names))
  return {"annotations": annotations_out, "label_map": label_map_out,
          "features": dict(feature_dirs), "video_ids": video_ids,
          "feature_fps": None if frames_per_step else float(feature_fps),
          "frames_per_step": frames_per_step, "stream_dims": dict(stream_dims)}


def main(argv):
  """CLI entry point: flags -> generate_dataset -> printed paths and the convert command."""
  from absl import app
  from absl import flags

  from tal_tf.dataset_tools import feature_readers

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  if not fv.output_dir:
    raise app.UsageError("--output_dir is required")
  dims = feature_readers.parse_stream_dims(fv.dims)
  paths = generate_dataset(fv.output_dir, subsets=fv.subset, num_videos=fv.num_videos or None,
                           stream_dims=dims, feature_fps=fv.feature_fps, seed=fv.seed,
                           noise_std=fv.noise_std, annotations_path=fv.annotations,
                           frames_per_step=fv.frames_per_step, selection=fv.selection)
  features_flag = ",".join(f"{s}:{d}" for s, d in paths["features"].items())
  rate_flag = (f"--frames_per_step={fv.frames_per_step:g}" if fv.frames_per_step
               else f"--feature_fps={fv.feature_fps:g}")
  print(f"Wrote {len(paths['video_ids'])} videos to {fv.output_dir}:\n"
        f"  annotations: {paths['annotations']}\n  label map:   {paths['label_map']}\n"
        f"  features:    {features_flag}\n"
        f"Convert with:\n  python -m tal_tf.dataset_tools.create_tfrecord "
        f"--annotations={paths['annotations']} --label_map={paths['label_map']} "
        f"--features={features_flag} {rate_flag} --subset=validation --output=<prefix>")
  return 0


def _define_flags():
  from absl import flags
  flags.DEFINE_string("output_dir", None, "Where to write annotations.json, label_map.pbtxt "
                      "and features/<stream>/<video_id>.npy.")
  flags.DEFINE_string("subset", "validation,test", "Subsets to generate (comma separated).")
  flags.DEFINE_integer("num_videos", 0, "Videos per subset (see --selection); 0 = all.",
                       lower_bound=0)
  flags.DEFINE_enum("selection", "spread", ["spread", "first"], "How --num_videos picks: "
                    "evenly spaced over the sorted ids (covers more classes) or the first N.")
  flags.DEFINE_string("dims", "rgb:64,flow:64", "Streams and dims; the first stream is the "
                      "appearance stream, the others motion streams.")
  flags.DEFINE_float("feature_fps", 2.0, "Feature steps per second (all videos).")
  flags.DEFINE_float("frames_per_step", None, "If set, each video's feature rate is its JSON "
                     "fps / frames_per_step instead of --feature_fps.")
  flags.DEFINE_integer("seed", 0, "Seed of the pattern bank and the per-video noise.")
  flags.DEFINE_float("noise_std", 0.8, "Per-dimension Gaussian noise std.")
  flags.DEFINE_string("annotations", None, "Source annotation JSON (default: the shipped "
                      "THUMOS14 copy).")


if __name__ == "__main__":
  from tal_tf.utils import cli as _cli
  _define_flags()
  _cli.run(main)
