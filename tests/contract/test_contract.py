"""The meta-architecture contract: every shipped model config runs the user's whole path.

For each case: tiny embedded-dataset records with the streams the config declares -> the
shipped config with its paths and step counts shrunk -> `train_main.py` (train, then a
resumed run that must restore the step it stopped at, and evaluate) -> the exporter CLI
(core ops only, checked by the exporter) -> a fresh `python -I` process that loads the
SavedModel without tal_tf -> the inference CLI -> the evaluation CLI. A new meta-architecture
adds its embedded config to CASES. The toy model (tests/contract/toy_model.py, defined
outside tal_tf) proves that no shared code needs to change for a new model; it is also
killed with SIGKILL inside its second phase and must resume there.

A model reading frames (S-CNN's C3D, `scnn_c3d`) runs on tiny synthetic videos turned into
frame records by the project's own tools; its exported model takes frames (model_info.json
says so), is also loaded through TensorFlow's C API, and the inference CLI decodes the
videos (--video).
"""
import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.dataset_tools import create_frame_records
from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import synthetic_thumos
from tal_tf.training import train_lib
from tal_tf.utils import config_util
from tal_tf.video import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRESH_LOAD = os.path.join(REPO, "tests", "export", "fresh_load.py")
C_API_RUNNER = os.path.join(REPO, "tests", "export", "c_api_runner.py")
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")

TOY_CONFIG = os.path.join(REPO, "tests", "contract", "toy_model.config")

Case = collections.namedtuple("Case", ["name", "config", "steps_per_phase", "kill_in_last",
                                       "override"], defaults=("",))
CASES = [
    Case("tal_net", os.path.join(REPO, "configs", "tal_net_embedded.config"), 4, False),
    Case("wtal", os.path.join(REPO, "configs", "wtal_embedded.config"), 4, False),
    Case("toy", TOY_CONFIG, 4, True),
    Case("scnn", os.path.join(REPO, "configs", "scnn_embedded.config"), 4, False),
    Case("etp", os.path.join(REPO, "configs", "etp_embedded.config"), 4, False),
    # P_pro >= 0 keeps every window as a proposal (after 4 steps per phase none reaches the
    # paper's 0.7), so the served proposal scores are real network outputs to compare.
    Case("scnn_c3d", os.path.join(REPO, "configs", "scnn_c3d_synthetic_video.config"), 4,
         False, "model { scnn { proposal_score_threshold: 0.0 } }"),
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """{stream dims tuple: data paths}: one tiny dataset per distinct stream layout."""
  return {}


def _data_for(datasets, tmp_path_factory, stream_dims):
  key = tuple(sorted(stream_dims.items()))
  if key in datasets:
    return datasets[key]
  root = tmp_path_factory.mktemp("contract_data")
  paths = synthetic_thumos.generate_dataset(
      str(root / "data"), subsets=("validation", "test"), num_videos=3,
      stream_dims=collections.OrderedDict(stream_dims), feature_fps=1.0, seed=0)
  source = feature_readers.NpyDirSource(paths["features"], None)
  out = dict(paths)
  for subset, name in (("validation", "train"), ("test", "test")):
    create_tfrecord.convert_dataset(
        paths["annotations"], str(root / name), paths["label_map"], source, subset=subset,
        num_shards=1, feature_fps=1.0, ignore_classes=("Ambiguous",), progress_stream=None)
    out[name] = str(root / f"{name}-*.tfrecord")
  with open(paths["annotations"]) as f:
    database = json.load(f)["database"]
  out["test_ids"] = sorted(v for v, e in database.items() if e["subset"].lower() == "test")
  datasets[key] = out
  return out


def _frame_data_for(datasets, tmp_path_factory, spec):
  """Tiny synthetic videos (tal_tf.video.synthetic) -> frame records at the stream's rate and
  size (create_frame_records): 3 training and 2 test videos of 8 s."""
  key = ("frames", spec)
  if key in datasets:
    return datasets[key]
  root = str(tmp_path_factory.mktemp("contract_frames"))
  database = synthetic.write_dataset(root, num_videos=5, seconds=8.0, fps=10, width=64,
                                     height=48, seed=0)
  out = dict(annotations=os.path.join(root, "annotations.json"),
             label_map=os.path.join(root, "label_map.pbtxt"),
             videos=os.path.join(root, "videos"))
  for subset, name in (("validation", "train"), ("test", "test")):
    create_frame_records.convert_videos(
        out["videos"], out["annotations"], os.path.join(root, name), out["label_map"],
        subset=subset, fps=spec.fps, size=(spec.width, spec.height), progress_stream=None)
    out[name] = os.path.join(root, f"{name}-*.tfrecord")
  out["test_ids"] = sorted(v for v, e in database.items() if e["subset"].lower() == "test")
  datasets[key] = out
  return out


def _served_inputs(info, data, video):
  """(serving_default inputs of `video`, inference CLI source flags) for a model reading
  features (.npy files) or frames (the video decoded as the CLI does)."""
  lengths, rate = info["inputs"]["lengths"], info["inputs"]["rate"]
  if lengths == "num_frames":
    from tal_tf.inference import video_source  # pylint: disable=g-import-not-at-top
    (stream, declared), = info["inputs"]["streams"].items()
    spec = stream_spec.FrameStream(declared["height"], declared["width"], declared["fps"])
    source = video_source.FrameVideoSource(data["videos"], {stream: spec}, video_ids=[video])
    (_, decoded), = list(source)
    frames = decoded.read(0, decoded.num_steps)[stream][np.newaxis]
    inputs = {stream: frames, lengths: np.array([frames.shape[1]], np.int32),
              rate: np.array([spec.fps], np.float32)}
    return inputs, [f"--video={data['videos']}"]
  features = {s: np.load(os.path.join(data["features"][s], f"{video}.npy"))[np.newaxis]
              for s in info["stream_names"]}
  t = features[info["stream_names"][0]].shape[1]
  inputs = dict(features, **{lengths: np.array([t], np.int32),
                             rate: np.array([1.0], np.float32)})
  flags = ["--features=" + ",".join(f"{s}:{data['features'][s]}"
                                    for s in info["stream_names"]), "--feature_fps=1.0"]
  return inputs, flags


def _c_api_outputs(export_dir, inputs, work):
  """serving_default run through TensorFlow's C API (TF Serving's loader) in a process
  without the tensorflow package nor tal_tf; returns its outputs."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  sig = saved.meta_graphs[0].signature_def["serving_default"]
  feeds = {}
  for key, value in inputs.items():
    feeds[key] = os.path.join(work, f"capi_{key}.npy")
    np.save(feeds[key], value)
  out_dir = os.path.join(work, "capi_out")
  spec = dict(tf_lib_dir=os.path.dirname(tf.__file__), export_dir=export_dir,
              inputs={k: v.name for k, v in sig.inputs.items()},
              outputs={k: v.name for k, v in sig.outputs.items()},
              runs=[dict(name="good", feeds=feeds, out_dir=out_dir)])
  with open(os.path.join(work, "capi_spec.json"), "w") as f:
    json.dump(spec, f)
  report = json.loads(_run([sys.executable, "-I", C_API_RUNNER,
                            os.path.join(work, "capi_spec.json")]).stdout)
  assert report["runs"]["good"]["ok"], report
  assert report["modules"] == []
  return {k: np.load(os.path.join(out_dir, k + ".npy")) for k in spec["outputs"]}


def _shrunk_config(case, data, path):
  """The shipped config pointed at the tiny data, with few steps per phase."""
  config = config_util.load_pipeline_config(case.config, case.override or None)
  train = config.train_config
  train.num_steps = case.steps_per_phase
  for phase in train.phases:
    phase.num_steps = case.steps_per_phase
  train.checkpoint_every_n_steps = 2
  train.steps_per_loop = 2
  train.summary_every_n_steps = 2
  train.log_every_n_steps = 2
  train.max_checkpoints_to_keep = 50
  train.eval_every_n_steps = 0
  for reader, pattern in ((config.train_input_reader, data["train"]),
                          (config.eval_input_reader, data["test"])):
    del reader.input_path[:]
    reader.input_path.append(pattern)
    reader.label_map_path = data["label_map"]
  config.eval_config.num_visualizations = 1
  config_util.save_pipeline_config(config, os.path.dirname(path), os.path.basename(path))
  return config


def _run(cmd, timeout=600):
  result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, (
      f"{' '.join(cmd[:3])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
  return result


def _latest_step(model_dir):
  path = tf.train.latest_checkpoint(model_dir)
  return int(path.rsplit("-", 1)[1]) if path else -1


def _train_killed_in_last_phase(cmd, model_dir, last_phase_start):
  """Starts training with a huge last phase, SIGKILLs it after a checkpoint inside that
  phase; returns the step of the newest checkpoint."""
  proc = subprocess.Popen(cmd + ["--num_train_steps=100000"], env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while time.time() < deadline:
      if _latest_step(model_dir) >= last_phase_start + 2:
        break
      assert proc.poll() is None, "training exited early"
      time.sleep(0.2)
    else:
      pytest.fail(f"no checkpoint past step {last_phase_start + 2} within 300 s")
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  return _latest_step(model_dir)


def _check_per_threshold_detections(case, model_dir, step, metrics, data):
  """S-CNN evaluates mAP@theta on detections with NMS at theta - 0.1: training's evaluation
  writes them per theta, and the evaluation CLI scores those files to the same mAP."""
  eval_dir = os.path.join(model_dir, train_lib.EVAL_SUBDIR)
  prefix = f"detections_step_{step}_tiou"
  files = sorted(f for f in os.listdir(eval_dir) if f.startswith(prefix))
  if not case.name.startswith("scnn"):   # scnn and scnn_c3d
    assert not files, files   # one (serving) post-processing for the other models
    return
  thetas = [f[len(prefix):-len(".json")] for f in files]
  assert thetas == [f"{t:g}" for t in np.arange(1, 8) / 10], thetas
  metrics_json = os.path.join(eval_dir, "replayed.json")
  _run([sys.executable, "-m", "tal_tf.evaluation.evaluate_main",
        f"--annotations={data['annotations']}",
        f"--results={os.path.join(eval_dir, f'detections_step_{step}.json')}", "--subset=test",
        "--threshold_results=" + ",".join(f"{t}={os.path.join(eval_dir, f)}"
                                          for t, f in zip(thetas, files)),
        f"--output_json={metrics_json}"])
  with open(metrics_json) as f:
    replayed = json.load(f)
  np.testing.assert_allclose(replayed["mAP"], metrics["detection"]["mAP"], atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_runs_the_whole_user_path(case, datasets, tmp_path_factory, tmp_path):
  shipped = config_util.load_pipeline_config(case.config)
  dims = config_util.stream_dims(shipped.train_input_reader)
  frames = stream_spec.has_frames(dims)
  if frames:
    data = _frame_data_for(datasets, tmp_path_factory, next(iter(dims.values())))
  else:
    data = _data_for(datasets, tmp_path_factory, dims)
  config_path = str(tmp_path / "pipeline.config")
  config = _shrunk_config(case, data, config_path)
  model_dir = str(tmp_path / "model")
  # `-m train_main` (on PYTHONPATH), not the script's path: Python resolves a script's symlinks
  # for sys.path[0], and under `bazel test` that would import tal_tf from the source tree.
  train = [sys.executable, "-m", "train_main",
           f"--pipeline_config={config_path}", f"--model_dir={model_dir}"]

  # Train, stopping before the end; the resumed run must continue from that checkpoint.
  phases = config.train_config.phases
  if case.kill_in_last:
    # The last phase is made huge and the run SIGKILLed inside it; the restart (capped two
    # steps later) must resume in that phase with its own optimizer.
    phases[-1].num_steps = 100000
    config_util.save_pipeline_config(config, str(tmp_path), "pipeline.config")
    last_start = sum(p.num_steps for p in phases[:-1])
    stopped = _train_killed_in_last_phase(train + ["--mode=train"], model_dir, last_start)
    phase_one_end = tf.train.load_checkpoint(os.path.join(model_dir, f"ckpt-{last_start}"))
    target = stopped + 2
    resumed = _run(train + ["--mode=train_and_eval", f"--num_train_steps={target}"])
    assert f"resuming at step {stopped}" in resumed.stderr, resumed.stderr[-3000:]
    final = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    # The last phase trained only its own variables: the first phase's extra ones are as
    # that phase left them.
    frozen = [k for k in final.get_variable_to_shape_map()
              if k.startswith("model/embed/") and k.endswith("VARIABLE_VALUE")]
    assert frozen
    for key in frozen:
      np.testing.assert_array_equal(final.get_tensor(key), phase_one_end.get_tensor(key))
  else:
    total = sum(p.num_steps for p in phases) if phases else case.steps_per_phase
    stopped, target = total - 2, total
    _run(train + ["--mode=train", f"--num_train_steps={stopped}"])
    resumed = _run(train + ["--mode=train_and_eval", f"--num_train_steps={target}"])
    assert f"(step {stopped})" in resumed.stderr, resumed.stderr[-3000:]
  assert _latest_step(model_dir) == target
  with open(os.path.join(model_dir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["global_step"] == target
  _check_per_threshold_detections(case, model_dir, target, metrics, data)

  # Export (the exporter refuses non-core ops), then load without tal_tf.
  serving = str(tmp_path / "serving")
  _run([sys.executable, os.path.join(REPO, "export", "export_saved_model.py"),
        f"--pipeline_config={config_path}", f"--trained_checkpoint_dir={model_dir}",
        f"--output_directory={serving}"])
  export_dir = os.path.join(serving, "1")
  with open(os.path.join(export_dir, "model_info.json")) as f:
    info = json.load(f)
  # Training recorded its records' rate (a frame model's: the frame rate) and the export
  # carries it; the inference CLI below checks its rate against it.
  trained_rate = info["inputs"]["streams"][info["stream_names"][0]].get("fps", 1.0) \
      if frames else 1.0
  rates = info["training_feature_fps"]
  assert (rates["min"], rates["max"]) == (trained_rate, trained_rate) and rates["videos"] > 0
  video = data["test_ids"][0]
  inputs, source_flags = _served_inputs(info, data, video)
  np.savez(str(tmp_path / "inputs.npz"), **inputs)
  _run([sys.executable, "-I", FRESH_LOAD, export_dir, str(tmp_path / "inputs.npz"),
        str(tmp_path / "outputs.npz")])
  with np.load(str(tmp_path / "outputs.npz")) as out:
    fresh = {k: out[k] for k in out.files}
  assert sorted(fresh) == sorted(info["output_fields"])
  if frames:
    # The C API (TF Serving's loader) gives the same detections from the uint8 frames.
    c_api = _c_api_outputs(export_dir, inputs, str(tmp_path))
    assert fresh["num_proposals"][0] > 0
    for key in ("num_detections", "detection_scores", "detection_segments", "num_proposals",
                "proposal_scores", "proposal_segments"):
      np.testing.assert_allclose(c_api[key], fresh[key], rtol=1e-5, atol=1e-6)

  # Inference CLI over the test features, then the evaluation CLI on its results.
  results = str(tmp_path / "results.json")
  _run([sys.executable, "-m", "tal_tf.inference.infer_main", f"--saved_model_dir={serving}",
        *source_flags, f"--annotations={data['annotations']}", "--subset=test",
        f"--output={results}"])
  with open(results) as f:
    written = json.load(f)["results"]
  assert sorted(written) == data["test_ids"]
  # The CLI's whole-video detections of `video` are the served ones.
  n = int(fresh["num_detections"][0])
  got = written[video]
  assert len(got) == n
  np.testing.assert_allclose([d["score"] for d in got], fresh["detection_scores"][0, :n],
                             rtol=1e-5)
  np.testing.assert_allclose(np.reshape([d["segment"] for d in got], (-1, 2)),
                             fresh["detection_segments"][0, :n].reshape(-1, 2), atol=1e-4)
  metrics_json = str(tmp_path / "eval.json")
  _run([sys.executable, "-m", "tal_tf.evaluation.evaluate_main",
        f"--annotations={data['annotations']}", f"--results={results}", "--subset=test",
        f"--output_json={metrics_json}"])
  with open(metrics_json) as f:
    evaluated = json.load(f)
  assert len(evaluated["mAP"]) == len(evaluated["tiou_thresholds"]) > 0
  assert 0.0 <= evaluated["average_mAP"] <= 1.0
