"""Frame records: converter round trip (frames, context, chunking, skips, atomic outputs) and
the tf.data frame pipeline (clip sampling, crops, flip, mean, labels) against numpy."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core.standard_fields import InputFields
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import frame_pipeline
from tal_tf.dataset_tools import create_frame_records
from tal_tf.video import synthetic

FPS = 10.0
SIZE = (48, 32)
SECONDS = 4.0
CHUNK = 16


@pytest.fixture(scope="module")
def records(tmp_path_factory, videos):
  root = str(tmp_path_factory.mktemp("frames"))
  database = synthetic.write_dataset(root, num_videos=2, seconds=SECONDS, fps=25, width=80,
                                     height=60, seed=3)
  # Two extra annotated ids: a truncated file and one without a file.
  shutil.copy(videos["truncated"]["path"], os.path.join(root, "videos", "video_bad.avi"))
  annotations = json.load(open(os.path.join(root, "annotations.json")))
  for extra in ("video_bad", "video_gone"):
    annotations["database"][extra] = {"subset": "validation", "duration": 10.0,
                                      "annotations": []}
  with open(os.path.join(root, "annotations.json"), "w") as f:
    json.dump(annotations, f)
  summary = create_frame_records.convert_videos(
      os.path.join(root, "videos"), os.path.join(root, "annotations.json"),
      os.path.join(root, "rec", "frames"), os.path.join(root, "label_map.pbtxt"),
      num_shards=2, fps=FPS, size=SIZE, max_frames_per_record=CHUNK, progress_stream=None)
  return dict(root=root, database=database, summary=summary,
              pattern=os.path.join(root, "rec", "frames-*.tfrecord"))


def _all_records(pattern):
  out = []
  for path in sorted(tf.io.gfile.glob(pattern)):
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      out.append(tf.train.SequenceExample.FromString(raw))
  return out


def test_round_trip_frames_and_context(records):
  summary = records["summary"]
  assert summary["num_written"] == 2 and summary["num_selected"] == 4
  assert sorted(summary["skipped_videos"]) == ["video_bad", "video_gone"]
  assert summary["skipped_videos"]["video_bad"].startswith("video_truncated")
  assert summary["skipped_videos"]["video_gone"].startswith("video_missing")
  assert not [n for n in os.listdir(os.path.dirname(records["pattern"])) if ".tmp-" in n]
  frames_per_video = math.ceil(SECONDS * FPS)
  by_video = {}
  for ex in _all_records(records["pattern"]):
    ctx = ex.context.feature
    vid = ctx[SEF.video_id].bytes_list.value[0].decode()
    jpegs = ex.feature_lists.feature_list[SEF.frames_jpeg].feature
    assert ctx[SEF.num_steps].int64_list.value[0] == len(jpegs) <= CHUNK
    assert ctx[SEF.num_frames].int64_list.value[0] == frames_per_video
    assert ctx[SEF.feature_fps].float_list.value[0] == pytest.approx(FPS)
    assert ctx[SEF.duration].float_list.value[0] == pytest.approx(SECONDS)
    assert (ctx[SEF.frame_width].int64_list.value[0],
            ctx[SEF.frame_height].int64_list.value[0]) == SIZE
    entry = records["database"][vid]
    starts = list(ctx[SEF.segment_start].float_list.value)
    np.testing.assert_allclose(starts, [a["segment"][0] for a in entry["annotations"]],
                               atol=1e-5)
    texts = [t.decode() for t in ctx[SEF.segment_label_text].bytes_list.value]
    assert texts == [a["label"] for a in entry["annotations"]]
    ids = {"Jump": 1, "Throw": 2}
    assert list(ctx[SEF.segment_label].int64_list.value) == [ids[t] for t in texts]
    assert list(ctx[SEF.video_labels].int64_list.value) == sorted({ids[t] for t in texts})
    first = ctx[SEF.first_frame].int64_list.value[0]
    by_video.setdefault(vid, []).append((first, [f.bytes_list.value[0] for f in jpegs]))
  assert sorted(by_video) == ["video_000", "video_001"]
  for vid, chunks in by_video.items():
    entry = records["database"][vid]
    chunks.sort()
    firsts = [c[0] for c in chunks]
    assert firsts == list(range(0, frames_per_video, CHUNK))
    frames = [tf.io.decode_jpeg(j).numpy() for _, js in chunks for j in js]
    assert len(frames) == frames_per_video
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    # Frame k is the 25-fps source frame on screen at k / FPS: the index code, read back from
    # a re-rendered full-size reference, must match the resized JPEG's content.
    for k in (0, 7, 23, frames_per_video - 1):
      source = int(math.floor(k / FPS * 25 + 1e-9))
      actions = [(a["segment"][0], a["segment"][1], {"Jump": 0, "Throw": 1}[a["label"]])
                 for a in entry["annotations"]]
      reference = synthetic.render_frame(source, 80, 60, 25, actions)
      small = tf.image.resize(reference[None].astype(np.float32), (SIZE[1], SIZE[0]),
                              method="area")[0].numpy()
      assert np.abs(frames[k].astype(np.float32) - small).mean() < 6.0, (vid, k)


@pytest.fixture(scope="module")
def frames(records):
  """{video_id: uint8 [N, H, W, 3]} of every record frame, in order."""
  out = {}
  for ex in _all_records(records["pattern"]):
    vid = ex.context.feature[SEF.video_id].bytes_list.value[0].decode()
    first = ex.context.feature[SEF.first_frame].int64_list.value[0]
    for i, f in enumerate(ex.feature_lists.feature_list[SEF.frames_jpeg].feature):
      out.setdefault(vid, {})[first + i] = tf.io.decode_jpeg(f.bytes_list.value[0]).numpy()
  return {v: np.stack([d[i] for i in sorted(d)]) for v, d in out.items()}


def _labels_reference(times, segments, labels):
  out = []
  for t in times:
    best, best_len = 0, np.inf
    for (s, e), lab in zip(segments, labels):
      if s <= t < e and e - s < best_len:
        best, best_len = lab, e - s
    out.append(best)
  return out


def test_eval_clips_center_crop_mean_and_labels(records, frames):
  mean = (100.0, 110.0, 120.0)
  ds = frame_pipeline.build_frame_dataset(
      records["pattern"], batch_size=3, is_training=False, clip_frames=4, window_frames=8,
      crop_size=(24, 40), mean_rgb=mean)
  count = 0
  for batch in ds:
    for i in range(batch["clips"].shape[0]):
      vid = batch["video_id"][i].numpy().decode()
      start_frame = int(round(batch["clip_start"][i].numpy() * FPS))
      assert batch["clip_end"][i].numpy() * FPS == pytest.approx(start_frame + 8, abs=1e-3)
      # 4 frames uniformly from 8: offsets floor((i + 0.5) * 2) = 1, 3, 5, 7.
      idx = start_frame + np.array([1, 3, 5, 7])
      np.testing.assert_allclose(batch["frame_times"][i].numpy(), idx / FPS, atol=1e-5)
      y, x = (SIZE[1] - 24) // 2, (SIZE[0] - 40) // 2
      expected = frames[vid][idx, y:y + 24, x:x + 40].astype(np.float32) - np.array(mean)
      np.testing.assert_allclose(batch["clips"][i].numpy(), expected, atol=1e-4)
      entry = records["database"][vid]
      segs = np.array([a["segment"] for a in entry["annotations"]], np.float64)
      labs = [{"Jump": 1, "Throw": 2}[a["label"]] for a in entry["annotations"]]
      assert batch["frame_labels"][i].numpy().tolist() == _labels_reference(idx / FPS, segs,
                                                                            labs)
      s, e = start_frame / FPS, (start_frame + 8) / FPS
      inter = np.maximum(0, np.minimum(e, segs[:, 1]) - np.maximum(s, segs[:, 0]))
      iou = inter / ((e - s) + (segs[:, 1] - segs[:, 0]) - inter)
      assert batch["clip_iou"][i].numpy() == pytest.approx(iou.max(), abs=1e-4)
      assert batch["clip_label"][i].numpy() == (labs[int(np.argmax(iou))] if iou.max() > 0
                                                else 0)
      count += 1
  # Each 16-frame record gives windows at 0 and 8 (the last 8-frame one is a full window).
  assert count == 2 * (2 + 2 + 1)  # Records of 16, 16 and 8 frames per video.


def test_training_random_crops_flips_and_reproducibility(records, frames):

  def build(seed):
    return frame_pipeline.build_frame_dataset(
        records["pattern"], batch_size=4, is_training=True, clip_frames=2,
        window_frames=(2, 4), clips_per_record=3, crop_size=(16, 16), mean_rgb=(0, 0, 0),
        seed=seed, shuffle_buffer=8)

  batches = list(build(5).take(4))
  again = list(build(5).take(4))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["clips"].numpy(), b["clips"].numpy())
  positions, flips = set(), 0
  for batch in batches:
    assert batch["clips"].shape == (4, 2, 16, 16, 3)
    for i in range(4):
      vid = batch["video_id"][i].numpy().decode()
      idx = np.round(batch["frame_times"][i].numpy() * FPS).astype(int)
      clip = batch["clips"][i].numpy()
      full = frames[vid][idx].astype(np.float32)
      match = None
      for y in range(SIZE[1] - 16 + 1):
        for x in range(SIZE[0] - 16 + 1):
          crop = full[:, y:y + 16, x:x + 16]
          if np.array_equal(clip, crop):
            match = (y, x, False)
          elif np.array_equal(clip, crop[:, :, ::-1]):
            match = (y, x, True)
          if match:
            break
        if match:
          break
      assert match is not None, "clip is not a (flipped) crop of its frames"
      positions.add(match[:2])
      flips += match[2]
  assert len(positions) > 3 and 0 < flips < 16


def test_smaller_frames_are_upscaled_to_the_crop(records):
  ds = frame_pipeline.build_frame_dataset(records["pattern"], batch_size=2, is_training=False,
                                          clip_frames=1, window_frames=1, crop_size=(64, 64))
  batch = next(iter(ds))
  assert batch["clips"].shape == (2, 1, 64, 64, 3)
  assert batch[InputFields.num_segments].shape == (2,)


def test_trimmed_clips_are_one_action_each(tmp_path):
  # Two short videos as trimmed clips: --trimmed, and "trimmed": true for one video of an
  # otherwise untrimmed conversion; every record's ground truth is [0, duration] per class.
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "videos"))
  synthetic.write_video(os.path.join(root, "videos", "clip_a.mp4"), 20, 10, 64, 32)
  synthetic.write_video(os.path.join(root, "videos", "clip_b.mp4"), 15, 10, 64, 32)
  database = {"clip_a": {"subset": "train", "duration": 2.0, "labels": ["Jump"],
                         "annotations": []},
              "clip_b": {"subset": "train", "duration": 1.5,
                         "annotations": [{"segment": [0.2, 0.9], "label": "Throw"}]}}
  with open(os.path.join(root, "clips.json"), "w") as f:
    json.dump({"database": database}, f)

  def convert(name, trimmed):
    summary = create_frame_records.convert_videos(
        os.path.join(root, "videos"), os.path.join(root, "clips.json"),
        os.path.join(root, name), os.path.join(root, "label_map.pbtxt"), fps=FPS, size=SIZE,
        progress_stream=None, trimmed=trimmed)
    out = {}
    for ex in _all_records(os.path.join(root, name + "-*.tfrecord")):
      ctx = ex.context.feature
      out[ctx[SEF.video_id].bytes_list.value[0].decode()] = (
          list(zip(ctx[SEF.segment_start].float_list.value,
                   ctx[SEF.segment_end].float_list.value)),
          list(ctx[SEF.segment_label].int64_list.value))
    return summary, out

  summary, records = convert("trimmed", True)
  assert summary["trimmed"] and summary["num_written"] == 2
  # Label map written from the classes, sorted by name: Jump 1, Throw 2.
  assert records == {"clip_a": ([(0.0, 2.0)], [1]), "clip_b": ([(0.0, 1.5)], [2])}
  assert "trimmed_segment_replaced" in summary["quirks"]
  _, untrimmed = convert("untrimmed", False)
  assert untrimmed["clip_b"] == ([(pytest.approx(0.2), pytest.approx(0.9))], [2])
  assert untrimmed["clip_a"] == ([], [])
  database["clip_b"]["trimmed"] = True
  with open(os.path.join(root, "clips.json"), "w") as f:
    json.dump({"database": database}, f)
  assert convert("per_video", False)[1]["clip_b"] == ([(0.0, 1.5)], [2])
