r"""Synthetic videos of moving shapes, encoded with PyAV (tests, benchmarks, the README demo).

Each frame shows a square moving left to right over a gradient background; frame i also
carries its index in a row of 16 black/white bit cells along the top edge (`read_index`
decodes it), so a test can tell exactly which source frame a decoded image came from.
"Action" intervals (seconds) add a bright disc that changes colour with its class, so a
model trained on features of these videos has something to find.

  python -m tal_tf.video.synthetic --output_dir=/tmp/videos --num_videos=6 --seconds=20
writes <output_dir>/video_XXX.mp4 plus annotations.json (ActivityNet format) and
label_map.pbtxt for them.
"""

import fractions
import json
import os

import numpy as np

from tal_tf.utils import atomic_files

INDEX_BITS = 16
_CELL = 4  # Pixel width/height of one index bit cell.

CLASS_COLORS = ((255, 40, 40), (40, 255, 40), (40, 40, 255), (255, 255, 40))


def render_frame(index, width, height, fps, actions=()):
  """uint8 RGB [height, width, 3] of frame `index` (see module doc); actions: (start_s,
  end_s, class_index) triples active at time index / fps draw a disc of that class colour."""
  t = index / float(fps)
  x = np.arange(width, dtype=np.float32)[None, :]
  y = np.arange(height, dtype=np.float32)[:, None]
  image = np.empty((height, width, 3), np.uint8)
  image[..., 0] = (40 + 80 * x / width).astype(np.uint8)
  image[..., 1] = (60 + 60 * y / height).astype(np.uint8)
  image[..., 2] = 90
  side = max(4, height // 5)
  cx = int((t * width / 4.0) % max(1, width - side))
  cy = height // 2 - side // 2
  image[cy:cy + side, cx:cx + side] = (230, 230, 230)
  for start, end, cls in actions:
    if start <= t < end:
      radius = max(3, height // 4)
      mask = (x - width * 0.7) ** 2 + (y - height * 0.6) ** 2 <= radius ** 2
      image[mask] = CLASS_COLORS[int(cls) % len(CLASS_COLORS)]
  bits = (int(index) >> np.arange(INDEX_BITS)) & 1
  for b, bit in enumerate(bits):
    image[:_CELL, b * _CELL:(b + 1) * _CELL] = 255 if bit else 0
  return image


def read_index(image):
  """Frame index encoded by render_frame, read back from a (decoded, lossy) image [H, W, 3]
  of the original size."""
  cells = image[1:_CELL - 1, :INDEX_BITS * _CELL].astype(np.float32).mean(axis=(0, 2))
  bits = cells.reshape(INDEX_BITS, _CELL)[:, 1:_CELL - 1].mean(axis=1) > 127
  return int(np.sum(bits.astype(np.int64) << np.arange(INDEX_BITS)))


def write_video(path, num_frames, fps=25, width=160, height=120, codec="libx264",
                actions=(), bit_rate=None, gop=None):
  """Encodes `num_frames` synthetic frames at `fps` into `path` (container from the
  extension: .mp4, .avi, .mkv, ...); codec e.g. 'libx264', 'mpeg4', 'mjpeg'. Returns path."""
  import av  # pylint: disable=g-import-not-at-top
  if width < INDEX_BITS * _CELL:
    raise ValueError(f"width must be >= {INDEX_BITS * _CELL} to hold the frame index")
  tmp = path + ".partial" + os.path.splitext(path)[1]
  with av.open(tmp, mode="w") as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if bit_rate:
      stream.bit_rate = int(bit_rate)
    if codec == "libx264":
      # Near-lossless so the index cells survive; 'veryfast' keeps long benchmark videos quick.
      stream.options = {"crf": "12", "preset": "veryfast"}
    elif codec == "mpeg4":
      stream.options = {"qscale": "2"}
      stream.codec_context.qscale = 2
    if gop:
      stream.codec_context.gop_size = int(gop)
    for i in range(int(num_frames)):
      frame = av.VideoFrame.from_ndarray(render_frame(i, width, height, fps, actions),
                                         format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  os.replace(tmp, path)
  return path


def write_dataset(output_dir, num_videos=6, seconds=20.0, fps=25, width=160, height=120,
                  class_names=("Jump", "Throw"), seed=0):
  """Writes num_videos .mp4 videos with random action intervals plus annotations.json
  (subsets: first two thirds 'validation', the rest 'test') and label_map.pbtxt; returns the
  annotation database dict."""
  from tal_tf.data import label_map_util  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  video_dir = os.path.join(output_dir, "videos")
  os.makedirs(video_dir, exist_ok=True)
  database = {}
  for v in range(int(num_videos)):
    video_id = f"video_{v:03d}"
    actions, annotations = [], []
    t = rng.uniform(0.5, 2.0)
    while t < seconds - 2.0:
      length = rng.uniform(1.5, 4.0)
      cls = int(rng.integers(len(class_names)))
      end = min(t + length, seconds - 0.5)
      actions.append((t, end, cls))
      annotations.append({"segment": [round(t, 3), round(end, 3)],
                          "label": class_names[cls]})
      t = end + rng.uniform(1.0, 4.0)
    write_video(os.path.join(video_dir, video_id + ".mp4"), int(round(seconds * fps)), fps,
                width, height, actions=actions)
    subset = "validation" if v < max(1, (2 * num_videos) // 3) else "test"
    database[video_id] = {"subset": subset, "duration": float(seconds), "fps": float(fps),
                          "annotations": annotations}
  atomic_files.write_text(os.path.join(output_dir, "annotations.json"),
                          json.dumps({"database": database}, indent=1, sort_keys=True))
  label_map_util.write_label_map(os.path.join(output_dir, "label_map.pbtxt"),
                                 label_map_util.items_from_class_names(list(class_names)))
  return database


def main(argv):
  """CLI: writes a synthetic video dataset (see module doc)."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  database = write_dataset(fv.output_dir, fv.num_videos, fv.seconds, fv.fps, fv.width,
                           fv.height)
  print(f"Wrote {len(database)} videos to {os.path.join(fv.output_dir, 'videos')} and "
        f"annotations.json / label_map.pbtxt to {fv.output_dir}")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("output_dir", None, "Where to write videos/, annotations.json and "
                      "label_map.pbtxt.", required=True)
  flags.DEFINE_integer("num_videos", 6, "Number of videos.")
  flags.DEFINE_float("seconds", 20.0, "Length of each video (s).")
  flags.DEFINE_integer("fps", 25, "Frame rate.")
  flags.DEFINE_integer("width", 160, "Frame width.")
  flags.DEFINE_integer("height", 120, "Frame height.")
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
