"""Serving client: request building and response parsing against the exported signature,
and the whole client (gRPC and REST) against stand-in servers that run the SavedModel
(tests/export/serving_stand_ins.py: there is no TF Serving binary on these machines).
"""
import json
import os

from absl import app
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tal_tf.data import sequence_example
from tal_tf.evaluation import io as eval_io
from tal_tf.export import exporter_lib
from tal_tf.utils import feature_rates
from tests import cli_util
from tests.export import cli_loader
from tests.export import serving_stand_ins
from tests.export import tiny_model

client = cli_loader.load_serving_client()


@pytest.fixture(scope="module")
def served(exported):
  """The loaded SavedModel plus its SignatureDefMap, as a server would hold them."""
  return dict(exported, **serving_stand_ins.load_served(exported["export_dir"]))


def _inputs(lengths=(30, 17)):
  videos = [tiny_model.random_features(t, 10 + i) for i, t in enumerate(lengths)]
  feats, num_steps = tiny_model.pad_batch(videos)
  return dict(feats, num_steps=num_steps, feature_fps=np.array([1.0, 0.5], np.float32))


_run_signature = serving_stand_ins.run_signature


def test_request_holds_the_inputs_of_the_signature(served):
  inputs = _inputs()
  request = client.build_predict_request(inputs, "tal_net", model_version=3)
  assert request.model_spec.name == "tal_net"
  assert request.model_spec.signature_name == "serving_default"
  assert request.model_spec.version.value == 3
  sig = served["sig_map"].signature_def["serving_default"]
  assert set(request.inputs) == set(sig.inputs)
  for name, value in inputs.items():
    proto = request.inputs[name]
    assert proto.dtype == sig.inputs[name].dtype, name
    np.testing.assert_array_equal(tf.make_ndarray(proto), value)  # TF's own decoder.


def test_response_parsing_recovers_the_model_outputs(served):
  inputs = _inputs()
  outputs = _run_signature(served, "serving_default", inputs)
  response = predict_pb2.PredictResponse()
  for name, value in outputs.items():
    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))  # TF's own encoder.
  parsed = client.parse_predict_response(response)
  assert sorted(parsed) == sorted(outputs)
  assert set(exporter_lib.DETECTION_OUTPUTS) <= set(parsed)
  for name, value in outputs.items():
    assert parsed[name].dtype == value.dtype, name
    np.testing.assert_array_equal(parsed[name], value, err_msg=name)
  # Repeated-value encodings (as some servers send small tensors) decode too.
  scalar_fill = tf.make_tensor_proto(np.float32(2.5), shape=[2, 3])
  np.testing.assert_array_equal(client.tensor_proto_to_ndarray(scalar_fill),
                                np.full((2, 3), 2.5, np.float32))


def test_rest_body_round_trip(served):
  inputs = _inputs()
  body = json.loads(json.dumps(client.build_rest_request(inputs)))
  assert body["signature_name"] == "serving_default"
  np.testing.assert_array_equal(np.asarray(body["inputs"]["rgb"], np.float32), inputs["rgb"])
  outputs = _run_signature(served, "serving_default", inputs)
  reply = json.loads(json.dumps({"outputs": {k: v.tolist() for k, v in outputs.items()}}))
  parsed = client.parse_rest_response(reply)
  for name, value in outputs.items():
    assert parsed[name].dtype == value.dtype, name
    np.testing.assert_array_equal(parsed[name], value, err_msg=name)
  with pytest.raises(RuntimeError, match="bad shape"):
    client.parse_rest_response({"error": "bad shape"})


def test_signature_metadata_gives_streams_and_detection_count(served):
  dims, max_detections, side = client.signature_from_metadata(served["sig_map"])
  assert dict(dims) == {"flow": 8, "rgb": 12}
  assert max_detections == tiny_model.MAX_DETECTIONS
  assert side is None
  with pytest.raises(ValueError, match="no signature 'nope'"):
    client.signature_from_metadata(served["sig_map"], "nope")


def _write_npy_features(root, lengths):
  dirs = {}
  for stream in tiny_model.STREAM_DIMS:
    dirs[stream] = os.path.join(root, stream)
    os.makedirs(dirs[stream], exist_ok=True)
  for i, t in enumerate(lengths):
    for stream, values in tiny_model.random_features(t, 100 + i).items():
      np.save(os.path.join(dirs[stream], f"video_{i}.npy"), values)
  return ",".join(f"{s}:{d}" for s, d in dirs.items())


def _client_flags(*args):
  return cli_util.parse_flags(client, *args)


def _expected_results(served, features_dir_flag, lengths, fps):
  """Each video alone through the SavedModel, labelled by the exported label map."""
  names = {1: "Jump", 2: "Run", 3: "Throw"}
  dirs = dict(part.split(":", 1) for part in features_dir_flag.split(","))
  expected = {}
  for i, t in enumerate(lengths):
    arrays = {s: np.load(os.path.join(d, f"video_{i}.npy"))[None] for s, d in dirs.items()}
    arrays.update(num_steps=np.array([t], np.int32), feature_fps=np.array([fps], np.float32))
    out = _run_signature(served, "serving_default", arrays)
    n = int(out["num_detections"][0])
    expected[f"video_{i}"] = dict(
        segments=out["detection_segments"][0, :n].astype(np.float64),
        scores=out["detection_scores"][0, :n].astype(np.float64),
        labels=[names[int(c)] for c in out["detection_classes"][0, :n]])
  return expected


def _check_results(path, expected):
  got = eval_io.load_results(path)
  assert sorted(got) == sorted(expected)
  for video, exp in expected.items():
    np.testing.assert_allclose(got[video]["segments"], exp["segments"], rtol=1e-6)
    np.testing.assert_allclose(got[video]["scores"], exp["scores"], rtol=1e-6)
    assert list(got[video]["labels"]) == exp["labels"]


def test_grpc_client_turns_features_into_results_json(served, tmp_path):
  with serving_stand_ins.grpc_server(served) as (address, service):
    lengths = (33, 12)
    features = _write_npy_features(str(tmp_path), lengths)
    output = str(tmp_path / "results.json")
    fv = _client_flags(f"--server={address}", "--model_name=tal_net",
                       f"--features={features}", "--feature_fps=2.0",
                       f"--label_map={served['export_dir']}/label_map.pbtxt",
                       f"--output={output}", "--batch_size=2")
    result = client.run(fv)
  assert not result.skipped
  assert len(service.requests) == 1  # Both videos in one batched request.
  assert service.requests[0].model_spec.name == "tal_net"
  _check_results(output, _expected_results(served, features, lengths, 2.0))


def test_rest_client_with_windows_matches_offline_inference(served, tmp_path):
  with serving_stand_ins.rest_server(served) as (url, _):
    features = _write_npy_features(str(tmp_path), (70,))
    output = str(tmp_path / "rest.json")
    fv = _client_flags(f"--rest_url={url}",
                       f"--features={features}", "--feature_fps=1.0",
                       f"--label_map={served['export_dir']}/label_map.pbtxt",
                       f"--output={output}", "--window_steps=32", "--window_overlap=0.25",
                       "--nms_iou_threshold=0.5", "--batch_size=3")
    result = client.run(fv)
  assert result.stats["windows"] == 3  # starts 0, 24, 38 (end-aligned)
  # The offline CLI on the same SavedModel and windows gives the same JSON.
  from tal_tf.inference import infer_main  # pylint: disable=g-import-not-at-top
  offline = str(tmp_path / "offline.json")
  fv = cli_util.parse_flags(
      infer_main, f"--saved_model_dir={served['export_dir']}", f"--features={features}",
      "--feature_fps=1.0", f"--output={offline}", "--window_steps=32",
      "--window_overlap=0.25", "--nms_iou_threshold=0.5", "--batch_size=3")
  infer_main.run(fv)
  with open(output) as a, open(offline) as b:
    assert json.load(a) == json.load(b)


def test_concatenated_hdf5_is_split_in_the_model_stream_order(served, tmp_path):
  """The signature lists streams alphabetically (flow, rgb); model_info.json (here the one
  beside --label_map) gives the model's order (rgb, flow), in which a single HDF5 file of
  [T, 12 + 8] is concatenated, as infer_main reads it."""
  import h5py  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import infer_main  # pylint: disable=g-import-not-at-top
  assert list(tiny_model.STREAM_DIMS) == ["rgb", "flow"]
  path = str(tmp_path / "feats.h5")
  with h5py.File(path, "w") as f:
    for i, t in enumerate((40, 21)):
      values = tiny_model.random_features(t, 200 + i)
      f.create_dataset(f"video_{i}", data=np.concatenate([values["rgb"], values["flow"]], 1))
  output, offline = str(tmp_path / "served.json"), str(tmp_path / "offline.json")
  with serving_stand_ins.grpc_server(served) as (address, _):
    client.run(_client_flags(f"--server={address}", f"--hdf5_features={path}",
                             "--feature_fps=1.0", f"--output={output}",
                             f"--label_map={served['export_dir']}/label_map.pbtxt"))
  infer_main.run(cli_util.parse_flags(
      infer_main, f"--saved_model_dir={served['export_dir']}", f"--hdf5_features={path}",
      "--feature_fps=1.0", f"--output={offline}"))
  with open(output) as a, open(offline) as b:
    got = json.load(a)
    assert got == json.load(b)
  assert sum(len(v) for v in got["results"].values()) > 0


# ----------------------------------------------------------------------------- rate check
class _NoServer:
  """A predictor that must not be called (the rate check comes before any request)."""

  def __getattr__(self, name):
    raise AssertionError(f"the client reached the server ({name}) before checking the rate")


def test_rate_check_reads_the_served_versions_model_info(exported, tmp_path_factory):
  rated = tiny_model.get_rated_export(tmp_path_factory)  # Trained at 1.6 and 2.0 steps/s.
  beside_label_map = f"--label_map={rated['export_dir']}/label_map.pbtxt"
  for source in (f"--model_info={rated['export_dir']}",
                 f"--model_info={rated['export_dir']}/model_info.json", beside_label_map):
    check = client.rate_check(_client_flags("--server=x:1", source))
    assert check.training["min"] == 1.6 and check.training["max"] == 2.0, source
    check.check_rate(1.28, "--feature_fps")
    check.check_rate(2.5, "--feature_fps")
    with pytest.raises(feature_rates.FeatureRateError,
                       match=r"^--feature_fps = 2.6 is outside .*/1/model_info.json was trained "
                       r"on \(1.6..2 steps/s over 3 videos"):
      check.check_rate(2.6, "--feature_fps")
  # The older export records no rates; no model_info at all: not checked.
  for args in ([f"--label_map={exported['export_dir']}/label_map.pbtxt"], []):
    check = client.rate_check(_client_flags("--server=x:1", *args))
    assert check.training is None
    check.check_rate(100.0, "--feature_fps")
  with pytest.raises(app.UsageError, match="--model_info '/nonexistent': no such file"):
    client.rate_check(_client_flags("--server=x:1", "--model_info=/nonexistent"))


def test_client_refuses_a_far_rate_before_any_request(tmp_path, tmp_path_factory):
  rated = tiny_model.get_rated_export(tmp_path_factory)
  features = _write_npy_features(str(tmp_path), (12,))
  fv = _client_flags("--server=x:1", f"--features={features}", "--feature_fps=1.0",
                     f"--model_info={rated['export_dir']}", f"--output={tmp_path / 'r.json'}")
  with pytest.raises(feature_rates.FeatureRateError, match="pass --allow_feature_fps_mismatch"):
    client.run(fv, predictor=_NoServer())


def test_client_checks_each_records_rate_and_the_override_runs(served, tmp_path,
                                                               tmp_path_factory):
  rated = tiny_model.get_rated_export(tmp_path_factory)
  records = str(tmp_path / "far.tfrecord")
  with tf.io.TFRecordWriter(records) as writer:
    writer.write(sequence_example.make_sequence_example(
        "far", 12 / 5.0, 5.0, tiny_model.random_features(12, 3), np.zeros((0, 2)), [],
        []).SerializeToString())
  with serving_stand_ins.grpc_server(served) as (address, service):
    args = [f"--server={address}", f"--tfrecords={records}",
            f"--model_info={rated['export_dir']}", f"--output={tmp_path / 'r.json'}"]
    with pytest.raises(feature_rates.FeatureRateError,
                       match=rf"^video/feature_fps of {records}\[record 0\] = 5 is outside"):
      client.run(_client_flags(*args))
    assert not service.requests
    result = client.run(_client_flags(*args, "--allow_feature_fps_mismatch"))
  assert sorted(result.detections) == ["far"] and len(service.requests) == 1
  np.testing.assert_allclose(tf.make_ndarray(service.requests[0].inputs["feature_fps"]), [5.0])
