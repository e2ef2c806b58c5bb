"""The embedded synthetic dataset: structure from THUMOS14, determinism, signal model."""

import json
import os

import numpy as np
import pytest

from tal_tf.data import label_map_util
from tal_tf.dataset_tools import synthetic_thumos as synth


@pytest.fixture(scope="module")
def thumos():
  return synth.load_annotations()["database"]


def test_shipped_thumos14_annotations(thumos):
  assert len(thumos) == 412
  subsets = sorted({e["subset"] for e in thumos.values()})
  assert subsets == ["Test", "Validation"]
  names = sorted({a["label"] for e in thumos.values() for a in e["annotations"]})
  assert len(names) == 20
  shipped = label_map_util.get_label_map_dict(synth.THUMOS14_LABEL_MAP)
  assert shipped == {n: i + 1 for i, n in enumerate(names)}


def test_generate_small_subset_layout_and_determinism(tmp_path, thumos):
  a = synth.generate_dataset(os.path.join(str(tmp_path), "a"), num_videos=2,
                             stream_dims={"rgb": 8, "flow": 6}, feature_fps=1.5, seed=5,
                             selection="first")
  b = synth.generate_dataset(os.path.join(str(tmp_path), "b"), subsets="test", num_videos=3,
                             stream_dims={"rgb": 8, "flow": 6}, feature_fps=1.5, seed=5,
                             selection="first")
  c = synth.generate_dataset(os.path.join(str(tmp_path), "c"), subsets="test", num_videos=1,
                             stream_dims={"rgb": 8, "flow": 6}, feature_fps=1.5, seed=6,
                             selection="first")
  val = sorted(v for v, e in thumos.items() if e["subset"] == "Validation")[:2]
  test = sorted(v for v, e in thumos.items() if e["subset"] == "Test")[:3]
  assert a["video_ids"] == val + test[:2]
  with open(a["annotations"]) as f:
    written = json.load(f)["database"]
  assert written == {v: thumos[v] for v in val + test[:2]}  # real annotations, unchanged
  assert len(label_map_util.load_label_map(a["label_map"])) == 20
  vid = test[0]
  x_a = np.load(os.path.join(a["features"]["rgb"], vid + ".npy"))
  x_b = np.load(os.path.join(b["features"]["rgb"], vid + ".npy"))
  x_c = np.load(os.path.join(c["features"]["rgb"], vid + ".npy"))
  assert x_a.dtype == np.float32
  assert x_a.shape == (int(round(thumos[vid]["duration"] * 1.5)), 8)
  assert np.load(os.path.join(a["features"]["flow"], vid + ".npy")).shape[1] == 6
  np.testing.assert_array_equal(x_a, x_b)  # same seed, different subset size: identical
  assert not np.allclose(x_a, x_c)         # other seed: other features


def test_spread_selection_and_frames_per_step(tmp_path, thumos):
  val = sorted(v for v, e in thumos.items() if e["subset"] == "Validation")
  picked = synth.select_videos(thumos, "validation", 3)
  assert picked == [val[0], val[round((len(val) - 1) / 2)], val[-1]]
  classes = {a["label"] for v in synth.select_videos(thumos, "validation", 20)
             for a in thumos[v]["annotations"]}
  assert len(classes) == 20
  out = synth.generate_dataset(str(tmp_path), subsets="test", num_videos=1,
                               stream_dims={"rgb": 4}, frames_per_step=16)
  vid = out["video_ids"][0]
  steps = np.load(os.path.join(out["features"]["rgb"], vid + ".npy")).shape[0]
  assert steps == int(round(thumos[vid]["duration"] * thumos[vid]["fps"] / 16))


def _projection(model, stream, kind, c, x):
  pattern = model.patterns[stream][kind][c]
  return x @ pattern / np.dot(pattern, pattern)


def test_signal_model_actions_context_and_background():
  """Hand-built video: one 6 s action of class 1 at [10, 16] s, 40 s long, at 2 fps."""
  model = synth.SignalModel(["a", "b", "c"], {"rgb": 64, "flow": 64}, seed=0, noise_std=0.3)
  x = model.video_features("hand", 40.0, [[10.0, 16.0]], ["b"], 2.0)
  assert x["rgb"].shape == (80, 64)
  inside = slice(22, 30)          # steps well inside [20, 32)
  far = np.r_[0:10, 50:80]        # far from the action and its context
  act = _projection(model, "rgb", "action", 1, x["rgb"])
  assert act[inside].mean() > 0.7 and np.abs(act[far]).mean() < 0.2
  other = _projection(model, "rgb", "action", 0, x["rgb"])
  # Class-specific: other classes' patterns correlate only by chance (~1/sqrt(D)).
  assert act[inside].mean() > 3 * np.abs(other[inside]).mean()
  # Motion stream: energy in the class's motion subspace only during the action.
  m1 = _projection(model, "flow", "motion1", 1, x["flow"])
  m2 = _projection(model, "flow", "motion2", 1, x["flow"])
  energy = np.hypot(m1, m2)
  assert energy[inside].mean() > 0.5 and energy[far].mean() < 0.25
  # Context: the pre pattern peaks just before the start, the post pattern just after the end.
  pre = _projection(model, "rgb", "pre", 1, x["rgb"])
  post = _projection(model, "rgb", "post", 1, x["rgb"])
  assert pre[16:20].mean() > 0.25 and np.abs(pre[far]).mean() < 0.2
  assert post[32:36].mean() > 0.25 and np.abs(post[far]).mean() < 0.2
  assert pre[16:20].mean() > np.abs(pre[inside]).mean()
  # Background switches: the dominant background state changes within the video.
  bg = x["rgb"][far] @ model.patterns["rgb"]["background"].T
  assert len(set(np.argmax(bg, axis=1).tolist())) > 1


def test_signal_model_rejects_unknown_class():
  model = synth.SignalModel(["a"], {"rgb": 4}, seed=0)
  with pytest.raises(ValueError, match="class 'z'"):
    model.video_features("v", 5.0, [[1, 2]], ["z"], 2.0)
  with pytest.raises(ValueError, match="subsets present"):
    synth.select_videos({"v": {"subset": "Test"}}, "validation")


def test_a_full_disk_leaves_only_whole_feature_files(tmp_path):
  # The generator writes through atomic_files: what a failed run leaves reads completely
  # (before, the file being written when the disk filled stayed truncated).
  from tests import fault_util  # pylint: disable=g-import-not-at-top
  disk = str(tmp_path / "disk")
  with fault_util.small_disk(disk, 512 * 1024):
    with pytest.raises(OSError):
      synth.generate_dataset(os.path.join(disk, "data"), subsets=("validation",),
                             num_videos=20, stream_dims={"rgb": 64}, feature_fps=2.0, seed=0)
    directory = os.path.join(disk, "data", "features", "rgb")
    names = sorted(os.listdir(directory))
    assert names and all(n.endswith(".npy") and not n.startswith(".") for n in names), names
    for name in names:
      assert np.load(os.path.join(directory, name)).shape[1] == 64
