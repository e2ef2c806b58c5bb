"""ETP with the frame Actionness Network through the shared trainer: the actionness phase on
trimmed-clip frame records (its own input reader), the refinement and localization phases on
feature records with AN proposals made from the untrimmed videos' frame records; resumable;
exported as one serving signature (frames + features -> AN -> RN -> LN) that a process
without tal_tf loads and runs with the results of the model run directly."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core.standard_fields import DetectionFields as DF
from tal_tf.data import label_map_util
from tal_tf.data import sequence_example
from tal_tf.dataset_tools import create_frame_records
from tal_tf.export import exporter_lib
from tal_tf.meta_architectures import etp_meta_arch as etp
from tal_tf.core.standard_fields import InputFields
from tal_tf.training import eval_lib
from tal_tf.training import train_lib
from tal_tf.utils import config_util

H, W = 36, 40
FRAME_FPS, FEATURE_FPS = 4.0, 2.0
# Untrimmed videos: (id, duration s, [(start, end, label)]).
VIDEOS = [("v1", 6.0, [(1.0, 3.0, 1)]), ("v2", 6.0, [(2.0, 4.5, 2)]),
          ("v3", 5.0, [(0.5, 2.0, 2), (3.0, 4.5, 1)])]
NAMES = {1: "Jump", 2: "Throw"}


def _frames(levels, rng):
  """JPEGs of frames whose gray level is levels[i] (+ noise)."""
  noise = rng.integers(0, 6, (len(levels), H, W, 3))
  images = np.clip(np.asarray(levels)[:, None, None, None] + noise, 0, 255).astype(np.uint8)
  return [create_frame_records.encode_jpeg(f) for f in images]


def _write(path, examples):
  with tf.io.TFRecordWriter(path) as writer:
    for e in examples:
      writer.write(e.SerializeToString())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("etp_frames")
  rng = np.random.default_rng(0)
  label_map = str(root / "label_map.pbtxt")
  label_map_util.write_label_map(label_map, NAMES.items())
  # Trimmed clips (the AN's fine-tuning data): 6 frames each, class 1 bright, class 2 mid.
  clips = []
  for i in range(4):
    label = 1 + i % 2
    clips.append(sequence_example.make_frame_sequence_example(
        f"clip{i}", 1.5, FRAME_FPS, _frames([200 if label == 1 else 110] * 6, rng),
        [[0.0, 1.5]], [label], [NAMES[label]], height=H, width=W))
  _write(str(root / "clips.tfrecord"), clips)
  frames, features = [], []
  for video_id, duration, segments in VIDEOS:
    times = np.arange(int(duration * FRAME_FPS)) / FRAME_FPS
    levels = np.full(len(times), 20)
    for start, end, label in segments:
      levels[(times >= start) & (times < end)] = 200 if label == 1 else 110
    seconds = [[s, e] for s, e, _ in segments]
    labels = [l for _, _, l in segments]
    texts = [NAMES[l] for l in labels]
    frames.append(sequence_example.make_frame_sequence_example(
        video_id, duration, FRAME_FPS, _frames(levels, rng), seconds, labels, texts,
        height=H, width=W))
    steps = int(duration * FEATURE_FPS)
    rgb = rng.normal(size=(steps, 4)).astype(np.float32)
    features.append(sequence_example.make_sequence_example(
        video_id, duration, FEATURE_FPS, {"rgb": rgb}, seconds, labels, texts))
  _write(str(root / "frames.tfrecord"), frames)
  _write(str(root / "features.tfrecord"), features)
  return dict(root=root, label_map=label_map)


def _config(data):
  frames_stream = f'streams {{ name: "frames" type: FRAMES frame_height: {H} frame_width: {W} }}'
  text = f"""
model {{ etp {{ num_classes: 2 streams: "rgb" refinement_hidden_units: 8
  localization_hidden_units: 8 max_proposals: 8 max_units: 4 max_length: 10 unit_length: 2
  grouping_thresholds: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] smoothing_sigma: 1.0
  frame_actionness {{ model_id: 10 depth_multiplier: 0.25 crop_size: 32 random_init: true
    frames_per_call: 16
    proposal_input_reader {{ input_path: "{data['root']}/frames.tfrecord"
      label_map_path: "{data['label_map']}" {frames_stream} }}
    eval_input_reader {{ input_path: "{data['root']}/frames.tfrecord"
      label_map_path: "{data['label_map']}" {frames_stream} }} }} }} }}
train_config {{
  optimizer {{ momentum {{ momentum: 0.9 }}
               learning_rate {{ constant {{ learning_rate: 0.01 }} }} }}
  phases {{ name: "actionness" num_steps: 2
    input_reader {{ input_path: "{data['root']}/clips.tfrecord"
      label_map_path: "{data['label_map']}" {frames_stream} batch_size: 2 max_steps: 3 }} }}
  phases {{ name: "refinement" num_steps: 2 }}
  phases {{ name: "localization" num_steps: 2 }}
  steps_per_loop: 1 checkpoint_every_n_steps: 100 seed: 1 }}
train_input_reader {{ input_path: "{data['root']}/features.tfrecord"
  label_map_path: "{data['label_map']}" streams {{ name: "rgb" dim: 4 }} batch_size: 2 }}
eval_config {{ tiou_thresholds: [0.3, 0.5] num_visualizations: 0 }}
eval_input_reader {{ input_path: "{data['root']}/features.tfrecord"
  label_map_path: "{data['label_map']}" streams {{ name: "rgb" dim: 4 }} batch_size: 2
  shuffle: false repeat: false }}
"""
  path = str(data["root"] / "etp_frames.config")
  with open(path, "w") as f:
    f.write(text)
  return config_util.load_pipeline_config(path)


def test_all_phases_train_from_frames_and_features_and_resume(data, tmp_path):
  config = _config(data)
  model_dir = str(tmp_path / "model")
  trainer = train_lib.Trainer(config, model_dir)
  seen = {}
  original = trainer.model.begin_phase

  def spy(phase, context):
    original(phase, context)
    seen[phase] = trainer.model.stream_names
  trainer.model.begin_phase = spy
  backbone = trainer.model._an.backbone.trainable_variables[0]
  ln_kernel = trainer.model._ln.activity.kernel
  before = backbone.numpy(), ln_kernel.numpy()
  assert trainer.train() == 6
  assert set(seen) == {"actionness", "refinement", "localization"}
  # The actionness phase moved the ResNet, the localization phase the LN; each phase took
  # its steps (the RN's only moves once an AN proposal overlaps the ground truth).
  assert not np.allclose(backbone.numpy(), before[0])
  assert not np.allclose(ln_kernel.numpy(), before[1])
  assert [int(p.optimizer.iterations.numpy()) for p in trainer.phases] == [2, 2, 2]
  # Each later phase cached proposals (feature steps) for every untrimmed training video.
  for phase in ("refinement", "localization"):
    path = os.path.join(model_dir, "phase_cache", phase, f"{phase}_proposals.npz")
    with np.load(path) as cache:
      assert sorted(cache["ids"]) == [b"v1", b"v2", b"v3"]
      counts, proposals = cache["counts"], cache["proposals"]
    assert counts.sum() > 0
    for video, (count, rows) in enumerate(zip(counts, proposals)):
      steps = VIDEOS[[b"v1", b"v2", b"v3"].index(sorted([b"v1", b"v2", b"v3"])[video])][1]
      assert np.all(rows[:count] >= 0) and np.all(rows[:count] <= steps * FEATURE_FPS)
  # A resumed run in the same model_dir has nothing left to do.
  assert train_lib.Trainer(config, model_dir).train() == 6

  # Evaluation: feature batches of the eval reader + frame scores from the eval videos'
  # frame records; the same detections as the chain run on each video's decoded frames.
  model = trainer.model
  metrics, collector = eval_lib.evaluate_model(model, config, 6, str(tmp_path / "eval"))
  assert sorted(collector.results) == ["v1", "v2", "v3"] and "average_mAP" in str(metrics)
  frames_by_video = {b[InputFields.video_id].numpy()[0].decode(): b
                     for b in model._eval_frames_fn()}
  compared = 0
  for batch in eval_lib.build_eval_dataset(config, 2).unbatch().batch(1):
    video = batch[InputFields.video_id].numpy()[0].decode()
    frames = frames_by_video[video]
    inputs = dict(batch[InputFields.features])
    inputs.update({"frames": frames[InputFields.features]["frames"],
                   etp.NUM_FRAMES: frames[InputFields.num_steps],
                   etp.FRAME_FPS: frames[InputFields.feature_fps],
                   etp.FEATURE_FPS: batch[InputFields.feature_fps]})
    direct = model.postprocess(model.predict(inputs, batch[InputFields.num_steps]),
                               batch[InputFields.num_steps], batch[InputFields.feature_fps])
    n = int(direct[DF.num_detections][0])
    scores = np.sort(collector.results[video]["scores"])[::-1]
    assert len(scores) == n, video
    np.testing.assert_allclose(scores, direct[DF.detection_scores].numpy()[0, :n], rtol=1e-4,
                               atol=1e-5)
    compared += n
  assert compared > 0, "no detections anywhere: the comparison above was empty"

  # Export: one signature from frames + features, core ops only (checked by the exporter).
  export_dir = exporter_lib.export_saved_model(config, model_dir, str(tmp_path / "export"))
  # The serving rate input is the train reader's (feature records at FEATURE_FPS); the
  # actionness phase's trimmed frame clips (FRAME_FPS) are not part of the record.
  info = exporter_lib.read_model_info(export_dir)
  assert info["training_feature_fps"] == dict(
      min=FEATURE_FPS, max=FEATURE_FPS, videos=len(VIDEOS),
      rates=[dict(fps=FEATURE_FPS, videos=len(VIDEOS))])
  rng = np.random.default_rng(5)
  levels = np.where((np.arange(20) >= 6) & (np.arange(20) < 12), 200, 20)
  frames = np.clip(levels[None, :, None, None, None] + rng.integers(0, 6, (2, 20, H, W, 3)),
                   0, 255).astype(np.uint8)
  inputs = {"rgb": rng.normal(size=(2, 10, 4)).astype(np.float32),
            "num_steps": np.array([10, 7], np.int32),
            "feature_fps": np.array([FEATURE_FPS, FEATURE_FPS], np.float32),
            "frames": frames, "num_frames": np.array([20, 13], np.int32),
            "fps": np.array([FRAME_FPS, FRAME_FPS], np.float32)}
  np.savez(str(tmp_path / "inputs.npz"), **inputs)
  fresh = os.path.join(os.path.dirname(os.path.dirname(__file__)), "export", "fresh_load.py")
  # -I: no PYTHONPATH, no user site: the SavedModel must run without tal_tf.
  subprocess.run([sys.executable, "-I", fresh, export_dir, str(tmp_path / "inputs.npz"),
                  str(tmp_path / "outputs.npz")], check=True, timeout=600)
  # `model` holds the trained (exported) weights.
  features = {"rgb": inputs["rgb"], "frames": inputs["frames"],
              etp.NUM_FRAMES: inputs["num_frames"], etp.FRAME_FPS: inputs["fps"],
              etp.FEATURE_FPS: inputs["feature_fps"]}
  direct = model.postprocess(model.predict(features, inputs["num_steps"]),
                             inputs["num_steps"], inputs["feature_fps"])
  with np.load(str(tmp_path / "outputs.npz")) as served:
    n = served[DF.num_detections]
    assert n.sum() > 0, "no detections: the comparison below would be empty"
    assert n.tolist() == direct[DF.num_detections].numpy().tolist()
    assert served[DF.num_proposals].tolist() == direct[DF.num_proposals].numpy().tolist()
    for key in (DF.detection_segments, DF.detection_scores, DF.detection_classes):
      for b in range(2):
        np.testing.assert_allclose(served[key][b, :n[b]], direct[key].numpy()[b, :n[b]],
                                   rtol=1e-4, atol=1e-4, err_msg=key)


def test_serving_input_names_are_the_models_keys():
  assert (etp.NUM_FRAMES, etp.FRAME_FPS, etp.FEATURE_FPS) == (
      exporter_lib.NUM_FRAMES_INPUT, exporter_lib.FPS_INPUT, exporter_lib.FEATURE_FPS_INPUT)


def test_readers_must_provide_their_phases_streams(data):
  config = _config(data)
  config.train_config.phases[0].input_reader.streams[0].name = "pixels"
  with pytest.raises(config_util.ConfigError, match=r"phases\[0\].input_reader.*frames"):
    config_util.validate_pipeline_config(config)
