"""Exporter: layout, versions, signatures, core ops only, equality with the in-process model,
input validation, and loading by saved_model_cli, a fresh process and TensorFlow's C API."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.builders import model_builder
from tal_tf.core.standard_fields import DetectionFields as DF
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import label_map_util
from tal_tf.data import sequence_example
from tal_tf.export import exporter_lib
from tal_tf.utils import config_util
from tests import cli_util
from tests.export import cli_loader
from tests.export import tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
# TAL-Net serves the required outputs plus its proposals.
OUTPUT_KEYS = exporter_lib.DETECTION_OUTPUTS + (DF.proposal_segments, DF.proposal_scores,
                                               DF.num_proposals)


def _batch(lengths=(40, 23, 9), seed=0, fps=(1.0, 2.0, 0.5)):
  videos = [tiny_model.random_features(t, seed + i) for i, t in enumerate(lengths)]
  feats, num_steps = tiny_model.pad_batch(videos)
  inputs = dict(feats, num_steps=num_steps,
                feature_fps=np.asarray(fps[:len(lengths)], np.float32))
  return videos, inputs


def _call_loaded(fn, inputs):
  return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _call_module(module, inputs):
  return {k: v.numpy() for k, v in module.serving_function()(inputs).items()}


def _signature_tensor_names(export_dir, signature):
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  sig = saved.meta_graphs[0].signature_def[signature]
  return ({k: v.name for k, v in sig.inputs.items()},
          {k: v.name for k, v in sig.outputs.items()})


# ----------------------------------------------------------------------------- subprocesses
# Started once, together, so their TensorFlow imports overlap with the in-process tests.
BAD_RUNS = {
    # name: (inputs modifier, substring expected in the error)
    "wrong_rank": (lambda x: dict(x, rgb=x["rgb"][0]), "input rgb must be float32 [batch, T, 12]"),
    "wrong_dim": (lambda x: dict(x, flow=x["flow"][:, :, :5]), "input flow must have feature dim 8"),
    "nan_feature": (lambda x: dict(x, rgb=np.where(np.arange(12) == 3, np.nan, x["rgb"])
                                   .astype(np.float32)), "input rgb holds NaN or Inf"),
    "num_steps_too_big": (lambda x: dict(x, num_steps=x["num_steps"] + 100),
                          "input num_steps must lie in [0, T]"),
    "batch_mismatch": (lambda x: dict(x, feature_fps=x["feature_fps"][:1]),
                       "input feature_fps must have one entry per video"),
    "bad_fps": (lambda x: dict(x, feature_fps=np.zeros_like(x["feature_fps"])),
                "input feature_fps must be finite and > 0"),
    "stream_lengths_differ": (lambda x: dict(x, flow=x["flow"][:, :-3]),
                              "inputs flow and rgb must have the same batch and T"),
    # A wrong rank of every input stops at its named rank check (not deep in the graph).
    "rgb_rank_4": (lambda x: dict(x, rgb=x["rgb"][None]),
                   "input rgb must be float32 [batch, T, 12]"),
    "flow_rank_2": (lambda x: dict(x, flow=x["flow"][0]),
                    "input flow must be float32 [batch, T, 8]"),
    "flow_rank_1": (lambda x: dict(x, flow=x["flow"][0, 0]),
                    "input flow must be float32 [batch, T, 8]"),
    "num_steps_rank_2": (lambda x: dict(x, num_steps=x["num_steps"][None]),
                         "input num_steps must be int32 [batch]"),
    "feature_fps_rank_2": (lambda x: dict(x, feature_fps=x["feature_fps"][:, None]),
                           "input feature_fps must be float32 [batch]"),
}
# tf_example signature: (examples modifier, substring expected in the error).
BAD_EXAMPLE_RUNS = {
    "examples_rank_2": (lambda e: e[None], "input examples must be string [batch]"),
    "examples_rank_2_column": (lambda e: e[:, None], "input examples must be string [batch]"),
}


def _serialized_batch(videos, fps):
  """Serialized SequenceExamples (numpy bytes [B]) of `videos` at `fps` steps/s each."""
  return np.array([sequence_example.make_sequence_example(
      f"v{i}", next(iter(v.values())).shape[0] / float(r), float(r), v,
      np.zeros((0, 2), np.float32), [], []).SerializeToString()
      for i, (v, r) in enumerate(zip(videos, fps))], dtype="S")


@pytest.fixture(scope="module", autouse=True)
def processes(exported, tmp_path_factory):
  """Launches saved_model_cli show / run, a fresh-process load and a C API load at once
  (autouse: they start with the module's first test and finish while the others run)."""
  work = str(tmp_path_factory.mktemp("processes"))
  export_dir = exported["export_dir"]
  _, inputs = _batch()
  np.savez(os.path.join(work, "inputs.npz"), **inputs)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  procs = {}

  def start(name, args, cwd=work):
    out = open(os.path.join(work, name + ".out"), "w")
    err = open(os.path.join(work, name + ".err"), "w")
    procs[name] = (subprocess.Popen(args, cwd=cwd, stdout=out, stderr=err, env=env), out, err)

  start("show", [SAVED_MODEL_CLI, "show", "--dir", export_dir, "--all"])
  npy = {}
  for key, value in inputs.items():
    npy[key] = os.path.join(work, f"cli_{key}.npy")
    np.save(npy[key], value)
  start("run", [SAVED_MODEL_CLI, "run", "--dir", export_dir, "--tag_set", "serve",
                "--signature_def", "serving_default",
                "--inputs", ";".join(f"{k}={p}" for k, p in npy.items()),
                "--outdir", os.path.join(work, "cli_out")])
  # -I: no user site, no PYTHONPATH, no script-dir-relative imports of the repository.
  start("fresh", [sys.executable, "-I", os.path.join(HERE, "fresh_load.py"), export_dir,
                  os.path.join(work, "inputs.npz"), os.path.join(work, "fresh_out.npz")])

  in_names, out_names = _signature_tensor_names(export_dir, "serving_default")
  runs = []

  def add_run(name, values, keep_output):
    feeds = {}
    for key, value in values.items():
      feeds[key] = os.path.join(work, f"capi_{name}_{key}.npy")
      np.save(feeds[key], value)
    runs.append(dict(name=name, feeds=feeds,
                     out_dir=os.path.join(work, "capi_" + name) if keep_output else None))

  add_run("good", inputs, True)
  for name, (modify, _) in BAD_RUNS.items():
    add_run(name, modify(inputs), False)
  empty_t = {k: (v[:, :0] if v.ndim == 3 else np.zeros_like(v) if k == "num_steps" else v)
             for k, v in inputs.items()}
  add_run("empty_t", empty_t, True)
  add_run("good_again", inputs, True)  # The process survived every bad request.
  spec = dict(tf_lib_dir=os.path.dirname(tf.__file__), export_dir=export_dir,
              inputs=in_names, outputs=out_names, runs=runs)
  with open(os.path.join(work, "capi_spec.json"), "w") as f:
    json.dump(spec, f)
  start("capi", [sys.executable, "-I", os.path.join(HERE, "c_api_runner.py"),
                 os.path.join(work, "capi_spec.json")])
  # The tf_example signature through the C API: good records, then each bad rank.
  videos, batch_inputs = _batch()
  examples = _serialized_batch(videos, batch_inputs["feature_fps"])
  ex_in, ex_out = _signature_tensor_names(export_dir, "tf_example")
  ex_runs = []
  for name, value in [("good", examples)] + [
      (name, modify(examples)) for name, (modify, _) in BAD_EXAMPLE_RUNS.items()]:
    path = os.path.join(work, f"capi_examples_{name}.npy")
    np.save(path, value)
    ex_runs.append(dict(name=name, feeds={"examples": path},
                        out_dir=os.path.join(work, "capi_examples_" + name)))
  with open(os.path.join(work, "capi_examples_spec.json"), "w") as f:
    json.dump(dict(spec, inputs=ex_in, outputs=ex_out, runs=ex_runs), f)
  start("capi_examples", [sys.executable, "-I", os.path.join(HERE, "c_api_runner.py"),
                          os.path.join(work, "capi_examples_spec.json")])
  yield dict(work=work, procs=procs, inputs=inputs)
  for proc, out, err in procs.values():
    if proc.poll() is None:
      proc.kill()
    out.close()
    err.close()


def _finish(processes, name, timeout=120):
  proc, out, err = processes["procs"][name]
  code = proc.wait(timeout=timeout)
  out.flush()
  err.flush()
  work = processes["work"]
  with open(os.path.join(work, name + ".out")) as f:
    stdout = f.read()
  with open(os.path.join(work, name + ".err")) as f:
    stderr = f.read()
  return code, stdout, stderr


# ----------------------------------------------------------------------------- layout
def test_export_writes_tf_serving_layout(exported):
  export_dir = exported["export_dir"]
  base = os.path.dirname(export_dir)
  assert os.path.basename(export_dir) == "1"
  assert sorted(n for n in os.listdir(base)) == ["1"]  # No staging leftovers.
  for name in ("saved_model.pb", "variables/variables.index", "pipeline.config",
               "label_map.pbtxt", "checkpoint/checkpoint"):
    assert os.path.exists(os.path.join(export_dir, name)), name
  saved = config_util.load_pipeline_config(os.path.join(export_dir, "pipeline.config"),
                                           validate=False)
  assert saved.model == exported["config"].model
  assert saved.eval_input_reader.label_map_path == "label_map.pbtxt"
  names = label_map_util.get_id_to_name(os.path.join(export_dir, "label_map.pbtxt"))
  assert names == {1: "Jump", 2: "Run", 3: "Throw"}


def test_model_info_carries_the_training_rates(exported, tmp_path_factory):
  rated = tiny_model.get_rated_export(tmp_path_factory)
  with open(os.path.join(rated["export_dir"], exporter_lib.MODEL_INFO_NAME)) as f:
    info = json.load(f)
  # TRAINING_RATES: v1 at 1.6, v2 and v3 at 2.0 steps/s.
  assert info["training_feature_fps"] == dict(
      min=1.6, max=2.0, videos=3, rates=[dict(fps=1.6, videos=1), dict(fps=2.0, videos=2)])
  # The rest of model_info is that of the same model exported without the record.
  with open(os.path.join(exported["export_dir"], exporter_lib.MODEL_INFO_NAME)) as f:
    older = json.load(f)
  # A model_dir without training_feature_fps.json (an older run) exports without the key.
  assert "training_feature_fps" not in older
  del info["training_feature_fps"]
  assert info == older


def test_exported_checkpoint_holds_the_trained_weights(exported):
  model = model_builder.build(exported["config"].model)
  exporter_lib.restore_model(model, tiny_model.STREAM_DIMS,
                             os.path.join(exported["export_dir"], "checkpoint"))
  trained = {v.name: v.numpy() for v in exported["module"].model.variables}
  restored = {v.name: v.numpy() for v in model.variables}
  assert trained.keys() == restored.keys() and trained
  for name, value in trained.items():
    np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_choose_version(tmp_path):
  base = str(tmp_path)
  assert exporter_lib.choose_version(base) == 1
  for name in ("1", "3", "tmp", ".export-4-x"):
    os.makedirs(os.path.join(base, name))
  assert exporter_lib.existing_versions(base) == [1, 3]
  assert exporter_lib.choose_version(base) == 4
  assert exporter_lib.choose_version(base, 2) == 2
  with pytest.raises(exporter_lib.ExportError, match="version 3 already exists"):
    exporter_lib.choose_version(base, 3)
  assert exporter_lib.choose_version(base, 3, overwrite=True) == 3
  with pytest.raises(exporter_lib.ExportError, match="must be an integer >= 1"):
    exporter_lib.choose_version(base, 0)


def test_cli_refuses_to_overwrite_unless_asked(exported, tmp_path, capsys):
  base = str(tmp_path / "serving")
  shutil.copytree(os.path.dirname(exported["export_dir"]), base)
  marker = os.path.join(base, "1", "old_marker")
  open(marker, "w").close()
  cli = cli_loader.load_exporter_cli()

  def flag_values(*extra):
    return cli_util.parse_flags(
        cli, f"--pipeline_config={exported['config_path']}",
        f"--trained_checkpoint_dir={exported['checkpoint']}",
        f"--output_directory={base}", *extra)

  with pytest.raises(exporter_lib.ExportError, match="version 1 already exists.*--overwrite"):
    cli.run(flag_values("--model_version=1"))
  assert os.path.exists(marker)
  path = cli.run(flag_values("--model_version=1", "--overwrite", "--max_detections=5"))
  assert path == os.path.join(base, "1")
  assert not os.path.exists(marker)
  assert sorted(os.listdir(base)) == ["1"]
  loaded = tf.saved_model.load(path)
  fn = loaded.signatures["serving_default"]
  assert fn.structured_outputs[DF.detection_scores].shape.as_list() == [None, 5]
  saved = config_util.load_pipeline_config(os.path.join(path, "pipeline.config"),
                                           validate=False)
  assert saved.export_config.max_detections == 5


def test_checkpoint_errors_are_clear(exported, tmp_path):
  with pytest.raises(exporter_lib.ExportError, match="no checkpoint in directory"):
    exporter_lib.resolve_checkpoint(str(tmp_path))
  with pytest.raises(exporter_lib.ExportError, match="not found"):
    exporter_lib.resolve_checkpoint(str(tmp_path / "ckpt-9"))
  other = config_util.parse_pipeline_text(
      tiny_model.CONFIG.replace("num_filters: 16", "num_filters: 8")
      % dict(label_map="x", max_detections=5, window=0, rgb_dim=tiny_model.STREAM_DIMS["rgb"],
             flow_dim=tiny_model.STREAM_DIMS["flow"]))
  with pytest.raises(exporter_lib.ExportError, match="does not match the model"):
    exporter_lib.build_detection_module(other, exported["checkpoint"])


# ----------------------------------------------------------------------------- ops
def test_graph_holds_only_core_ops(exported):
  ops = exporter_lib.check_core_ops(exported["export_dir"])
  # The function library is walked: these live only inside the signature functions.
  for op in ("NonMaxSuppressionV5", "Conv2D", "ParseSequenceExampleV2", "Assert"):
    assert op in ops, op
  assert not set(ops) & exporter_lib.PYTHON_OPS
  assert exporter_lib.non_core_ops(["Conv2D", "PyFunc", "IO>HDF5ReadDataset"]) == [
      "IO>HDF5ReadDataset", "PyFunc"]


def test_op_check_rejects_a_python_callback(tmp_path):
  module = tf.Module()
  module.fn = tf.function(lambda x: tf.py_function(lambda a: a * 2.0, [x], tf.float32),
                          input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path), signatures=module.fn.get_concrete_function())
  with pytest.raises(exporter_lib.ExportError, match="EagerPyFunc"):
    exporter_lib.check_core_ops(str(tmp_path))


# ----------------------------------------------------------------------------- equality
def test_loaded_model_reproduces_in_process_detections_exactly(exported):
  _, inputs = _batch()
  fn = tf.saved_model.load(exported["export_dir"]).signatures["serving_default"]
  loaded = _call_loaded(fn, inputs)
  module = exported["module"]
  in_process = _call_module(module, inputs)
  assert sorted(loaded) == sorted(OUTPUT_KEYS)
  for key in OUTPUT_KEYS:
    np.testing.assert_array_equal(loaded[key], in_process[key], err_msg=key)
  assert (loaded[DF.num_detections] > 0).all()
  # And the plain (eager) model agrees up to float rounding of graph rewrites.
  model = module.model
  feats = {s: tf.constant(inputs[s]) for s in tiny_model.STREAM_DIMS}
  eager = model.postprocess(model.predict(feats, tf.constant(inputs["num_steps"])),
                            tf.constant(inputs["num_steps"]), tf.constant(inputs["feature_fps"]))
  n = tiny_model.MAX_DETECTIONS
  np.testing.assert_array_equal(eager[DF.num_detections].numpy().clip(max=n),
                                loaded[DF.num_detections])
  np.testing.assert_allclose(eager[DF.detection_scores].numpy()[:, :n],
                             loaded[DF.detection_scores], atol=1e-5)
  np.testing.assert_allclose(eager[DF.detection_segments].numpy()[:, :n],
                             loaded[DF.detection_segments], atol=1e-4)


def test_batch_detections_equal_each_video_alone(exported):
  videos, inputs = _batch(lengths=(40, 23, 9))
  fn = tf.saved_model.load(exported["export_dir"]).signatures["serving_default"]
  batched = _call_loaded(fn, inputs)
  for b, video in enumerate(videos):
    single_inputs = {s: video[s][None] for s in video}
    single_inputs.update(num_steps=inputs["num_steps"][b:b + 1],
                         feature_fps=inputs["feature_fps"][b:b + 1])
    single = _call_loaded(fn, single_inputs)
    for count, keys in ((DF.num_detections, (DF.detection_segments, DF.detection_scores,
                                              DF.detection_classes)),
                        (DF.num_proposals, (DF.proposal_segments, DF.proposal_scores))):
      n = int(single[count][0])
      assert int(batched[count][b]) == n, (b, count)
      for key in keys:
        np.testing.assert_allclose(batched[key][b, :n], single[key][0, :n], atol=1e-4,
                                   err_msg=f"video {b} {key}")
    # Seconds: every segment lies inside its own video.
    duration = video["rgb"].shape[0] / inputs["feature_fps"][b]
    n = int(single[DF.num_detections][0])
    assert single[DF.detection_segments][0, :n].max() <= duration + 1e-4


def test_tf_example_signature_matches_serving_default(exported):
  videos, inputs = _batch(lengths=(40, 23))
  records = []
  for b, video in enumerate(videos):
    t = video["rgb"].shape[0]
    example = sequence_example.make_sequence_example(
        f"video_{b}", duration=t / inputs["feature_fps"][b],
        feature_fps=inputs["feature_fps"][b], features=video,
        segments_seconds=[[1.0, 3.0]], labels=[1], label_texts=["Jump"])
    records.append(example.SerializeToString())
  loaded = tf.saved_model.load(exported["export_dir"])
  from_records = loaded.signatures["tf_example"](examples=tf.constant(records))
  from_features = _call_loaded(loaded.signatures["serving_default"], inputs)
  assert [v.decode() for v in from_records["video_id"].numpy()] == ["video_0", "video_1"]
  for key in OUTPUT_KEYS:
    np.testing.assert_array_equal(from_records[key].numpy(), from_features[key], err_msg=key)


@pytest.mark.parametrize("missing", [SEF.feature_fps, SEF.num_steps, SEF.video_id])
def test_tf_example_records_missing_a_context_feature(exported, missing):
  """A record without feature_fps or num_steps stops at a check naming the feature and the
  record; one without a video id is served with an empty id and the same detections."""
  videos, inputs = _batch(lengths=(40, 23))
  records = []
  for b, video in enumerate(videos):
    example = sequence_example.make_sequence_example(
        f"video_{b}", duration=video["rgb"].shape[0] / inputs["feature_fps"][b],
        feature_fps=inputs["feature_fps"][b], features=video, segments_seconds=[],
        labels=[], label_texts=[])
    if b == 1:
      del example.context.feature[missing]
    records.append(example.SerializeToString())
  signature = tf.saved_model.load(exported["export_dir"]).signatures["tf_example"]
  if missing == SEF.video_id:
    out = signature(examples=tf.constant(records))
    assert [v.decode() for v in out["video_id"].numpy()] == ["video_0", ""]
    expected = _call_loaded(tf.saved_model.load(exported["export_dir"]).signatures[
        "serving_default"], inputs)
    for key in OUTPUT_KEYS:
      np.testing.assert_array_equal(out[key].numpy(), expected[key], err_msg=key)
    return
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    signature(examples=tf.constant(records))
  message = info.value.message
  assert f"input examples: records lack the context feature {missing}" in message
  assert "[1]" in message


def test_max_detections_slices_or_pads_the_model_output(exported):
  model = exported["module"].model
  _, inputs = _batch(lengths=(40,))
  feats = {s: inputs[s] for s in tiny_model.STREAM_DIMS}
  few = exporter_lib.DetectionModule(model, tiny_model.STREAM_DIMS, max_detections=4)
  many = exporter_lib.DetectionModule(model, tiny_model.STREAM_DIMS, max_detections=25)
  out_few = few.detect(feats, inputs["num_steps"], inputs["feature_fps"])
  out_many = many.detect(feats, inputs["num_steps"], inputs["feature_fps"])
  model_n = 20  # second_stage_nms.max_total of the tiny config.
  assert out_many[DF.detection_scores].shape == (1, 25)
  assert int(out_few[DF.num_detections][0]) == 4
  np.testing.assert_array_equal(out_many[DF.detection_scores].numpy()[:, model_n:], 0.0)
  np.testing.assert_allclose(out_few[DF.detection_scores].numpy(),
                             out_many[DF.detection_scores].numpy()[:, :4])
  with pytest.raises(exporter_lib.ExportError, match="max_detections must be >= 1"):
    exporter_lib.DetectionModule(model, tiny_model.STREAM_DIMS, max_detections=0)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def unchecked_detect(exported):
  """module.detect under a signature that lets any shape through (as a C++ client can)."""
  module = exported["module"]
  spec = {s: tf.TensorSpec(None, tf.float32) for s in tiny_model.STREAM_DIMS}
  return tf.function(lambda f, n, r: module.detect(f, n, r), input_signature=[
      spec, tf.TensorSpec(None, tf.int32), tf.TensorSpec(None, tf.float32)])


@pytest.mark.parametrize("name", sorted(BAD_RUNS))
def test_bad_input_raises_a_clear_error(unchecked_detect, name):
  _, inputs = _batch(lengths=(20, 14))
  modify, message = BAD_RUNS[name]
  bad = modify(inputs)
  feats = {s: bad[s] for s in tiny_model.STREAM_DIMS}
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    unchecked_detect(feats, bad["num_steps"], bad["feature_fps"])
  assert message in str(info.value).replace("\\'", "'")


def test_empty_inputs_give_empty_results(unchecked_detect):
  dims = tiny_model.STREAM_DIMS
  n = tiny_model.MAX_DETECTIONS
  # T = 0.
  out = unchecked_detect({s: np.zeros((2, 0, d), np.float32) for s, d in dims.items()},
                         np.zeros(2, np.int32), np.ones(2, np.float32))
  assert out[DF.detection_scores].shape == (2, n)
  np.testing.assert_array_equal(out[DF.num_detections].numpy(), [0, 0])
  np.testing.assert_array_equal(out[DF.num_proposals].numpy(), [0, 0])
  # B = 0.
  out = unchecked_detect({s: np.zeros((0, 7, d), np.float32) for s, d in dims.items()},
                         np.zeros(0, np.int32), np.zeros(0, np.float32))
  assert out[DF.detection_segments].shape == (0, n, 2)
  # num_steps = 0 next to a real video, and NaN in padding (never read) is accepted.
  _, inputs = _batch(lengths=(20, 14))
  feats = {s: inputs[s].copy() for s in dims}
  feats["rgb"][1, 14:] = np.nan
  out = unchecked_detect(feats, np.array([0, 14], np.int32), inputs["feature_fps"][:2])
  assert int(out[DF.num_detections][0]) == 0 and int(out[DF.num_detections][1]) > 0


# ----------------------------------------------------------------------------- processes
def test_saved_model_cli_show_lists_both_signatures(processes):
  code, stdout, stderr = _finish(processes, "show")
  assert code == 0, stderr
  assert "signature_def['serving_default']" in stdout
  assert "signature_def['tf_example']" in stdout
  assert "inputs['rgb'] tensor_info:" in stdout and "shape: (-1, -1, 12)" in stdout
  assert "inputs['flow'] tensor_info:" in stdout and "shape: (-1, -1, 8)" in stdout
  assert "inputs['examples'] tensor_info:" in stdout
  for key in OUTPUT_KEYS:
    assert f"outputs['{key}']" in stdout, key
  assert "shape: (-1, 15, 2)" in stdout  # detection_segments [B, N, 2]


def test_saved_model_cli_run_reproduces_in_process_detections(processes, exported):
  code, _, stderr = _finish(processes, "run")
  assert code == 0, stderr[-3000:]
  expected = _call_module(exported["module"], processes["inputs"])
  out_dir = os.path.join(processes["work"], "cli_out")
  for key in OUTPUT_KEYS:
    np.testing.assert_array_equal(np.load(os.path.join(out_dir, key + ".npy")), expected[key],
                                  err_msg=key)


def test_fresh_process_without_tal_tf_reproduces_detections(processes, exported):
  code, _, stderr = _finish(processes, "fresh")
  assert code == 0, stderr[-3000:]
  expected = _call_module(exported["module"], processes["inputs"])
  with np.load(os.path.join(processes["work"], "fresh_out.npz")) as got:
    assert sorted(got.files) == sorted(OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_c_api_loader_reproduces_detections_and_survives_bad_input(processes, exported):
  code, stdout, stderr = _finish(processes, "capi")
  assert code == 0, stderr[-3000:]
  report = json.loads(stdout)
  assert report["modules"] == []  # Neither tensorflow (Python) nor tal_tf was imported.
  runs = report["runs"]
  expected = _call_module(exported["module"], processes["inputs"])
  for name in ("good", "good_again"):
    assert runs[name]["ok"], runs[name]
    for key in OUTPUT_KEYS:
      got = np.load(os.path.join(processes["work"], "capi_" + name, key + ".npy"))
      np.testing.assert_array_equal(got, expected[key], err_msg=f"{name} {key}")
  for name, (_, message) in BAD_RUNS.items():
    assert not runs[name]["ok"], name
    assert runs[name]["code"] == 3, runs[name]  # INVALID_ARGUMENT
    assert message in runs[name]["message"].replace("\\'", "'"), runs[name]["message"]
  assert runs["empty_t"]["ok"], runs["empty_t"]
  num = np.load(os.path.join(processes["work"], "capi_empty_t", "num_detections.npy"))
  np.testing.assert_array_equal(num, [0, 0, 0])


def test_c_api_tf_example_signature_checks_the_rank_of_examples(processes, exported):
  code, stdout, stderr = _finish(processes, "capi_examples")
  assert code == 0, stderr[-3000:]
  runs = json.loads(stdout)["runs"]
  assert runs["good"]["ok"], runs["good"]
  expected = _call_module(exported["module"], processes["inputs"])
  for key in (DF.detection_scores, DF.detection_segments, DF.detection_classes):
    got = np.load(os.path.join(processes["work"], "capi_examples_good", key + ".npy"))
    np.testing.assert_allclose(got, expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
  for name, (_, message) in BAD_EXAMPLE_RUNS.items():
    assert not runs[name]["ok"], name
    assert runs[name]["code"] == 3, runs[name]  # INVALID_ARGUMENT
    assert message in runs[name]["message"], runs[name]["message"]
    assert "check_rank_examples" in runs[name]["message"], runs[name]["message"]
