"""Synthetic videos shared by the video tests (encoded once per session with PyAV)."""
import os

import pytest

from tal_tf.video import synthetic

# name -> (file, frames, fps, codec)
VIDEOS = {
    "h264": ("clip_h264.mp4", 60, 30, "libx264"),
    "mpeg4": ("clip_mpeg4.avi", 50, 25, "mpeg4"),
    "mjpeg": ("clip_mjpeg.mkv", 40, 20, "mjpeg"),
}
WIDTH, HEIGHT = 96, 64


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
  """{name: dict(path, frames, fps, codec)} plus 'truncated' (an AVI cut in half), 'garbage',
  'empty' files."""
  root = str(tmp_path_factory.mktemp("videos"))
  out = {}
  for name, (filename, frames, fps, codec) in VIDEOS.items():
    path = synthetic.write_video(os.path.join(root, filename), frames, fps, WIDTH, HEIGHT,
                                 codec=codec)
    out[name] = dict(path=path, frames=frames, fps=fps, codec=codec)
  long_avi = synthetic.write_video(os.path.join(root, "long.avi"), 250, 25, WIDTH, HEIGHT,
                                   codec="mpeg4")
  data = open(long_avi, "rb").read()
  truncated = os.path.join(root, "truncated.avi")
  with open(truncated, "wb") as f:
    f.write(data[:len(data) // 2])
  os.remove(long_avi)
  garbage = os.path.join(root, "garbage.mp4")
  with open(garbage, "wb") as f:
    f.write(bytes(range(256)) * 20)
  empty = os.path.join(root, "empty.mp4")
  open(empty, "wb").close()
  out["truncated"] = dict(path=truncated)
  out["garbage"] = dict(path=garbage)
  out["empty"] = dict(path=empty)
  out["root"] = root
  return out
