"""Decoding: frame counts and timestamps vs what was encoded, fps resampling, resizing, bad
files (truncated, garbage, empty, missing) and the frame-index code of the test videos."""
import math
import os

import numpy as np
import pytest

from tal_tf.video import decoding
from tal_tf.video import synthetic
from tests.video.conftest import HEIGHT, WIDTH


@pytest.mark.parametrize("name", ["h264", "mpeg4", "mjpeg"])
def test_every_frame_decoded_with_its_timestamp(videos, name):
  v = videos[name]
  info = decoding.probe(v["path"])
  assert (info.width, info.height) == (WIDTH, HEIGHT)
  assert info.fps == pytest.approx(v["fps"])
  times, images = decoding.decode_all(v["path"])
  assert len(times) == v["frames"]
  np.testing.assert_allclose(times, np.arange(v["frames"]) / v["fps"], atol=1e-6)
  # Each decoded image is the frame encoded at that position (its index code survives).
  assert [synthetic.read_index(im) for im in images] == list(range(v["frames"]))


@pytest.mark.parametrize("name,target_fps", [("h264", 10.0), ("mpeg4", 10.0),
                                             ("mjpeg", 7.0), ("h264", 45.0)])
def test_resampling_shows_the_frame_on_screen_at_each_output_time(videos, name, target_fps):
  v = videos[name]
  duration = v["frames"] / v["fps"]
  times, images = decoding.decode_all(v["path"], fps=target_fps)
  expected_count = math.ceil(duration * target_fps - 1e-9)
  assert len(times) == expected_count == decoding.num_resampled_frames(duration, target_fps)
  np.testing.assert_allclose(times, np.arange(expected_count) / target_fps, atol=1e-9)
  # Reference: output k shows source frame floor(t_k * source_fps) (last one with pts <= t_k).
  expected = [int(math.floor(k / target_fps * v["fps"] + 1e-9)) for k in range(expected_count)]
  assert [synthetic.read_index(im) for im in images] == expected


def test_resize_to_size_and_short_side(videos):
  path = videos["h264"]["path"]
  _, fixed = decoding.decode_all(path, fps=5, size=(40, 30))
  assert fixed.shape[1:] == (30, 40, 3)
  _, short = decoding.decode_all(path, fps=5, short_side=32)
  assert short.shape[1:] == (32, 48, 3)  # 96x64 -> short side 32 keeps 3:2.
  assert decoding.output_size(640, 360, short_side=256) == (455, 256)
  assert decoding.parse_size("171x128") == (171, 128)
  with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
    decoding.parse_size("171by128")


@pytest.mark.parametrize("name,kind", [("truncated", "video_truncated"),
                                       ("garbage", "video_unreadable"),
                                       ("empty", "video_empty")])
def test_bad_files_raise_a_named_error(videos, name, kind):
  with pytest.raises(decoding.VideoError) as info:
    decoding.decode_all(videos[name]["path"], fps=10)
  assert info.value.kind == kind
  assert videos[name]["path"] in str(info.value)


def test_missing_file_and_listing(videos, tmp_path):
  with pytest.raises(decoding.VideoError) as info:
    decoding.probe(str(tmp_path / "nope.mp4"))
  assert info.value.kind == "video_missing"
  found = decoding.list_videos(videos["root"])
  assert found["clip_h264"].endswith("clip_h264.mp4")
  assert set(found) == {"clip_h264", "clip_mpeg4", "clip_mjpeg", "truncated", "garbage",
                        "empty"}
  assert decoding.list_videos(videos["h264"]["path"]) == {"clip_h264": videos["h264"]["path"]}
  with pytest.raises(ValueError, match="no video files"):
    decoding.list_videos(str(tmp_path))
  assert not [n for n in os.listdir(videos["root"]) if "partial" in n]
