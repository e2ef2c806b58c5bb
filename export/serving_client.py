r"""Client for a tal_tf model served by TensorFlow Serving: feature files -> results JSON.

  # gRPC (port 8500 of tensorflow/serving):
  python export/serving_client.py --server=localhost:8500 --model_name=tal_net \
      --features=rgb:feats/rgb,flow:feats/flow --feature_fps=0.625 \
      --label_map=serving/tal_net/1/label_map.pbtxt --output=results.json
  # REST (port 8501) instead:
  python export/serving_client.py --rest_url=http://localhost:8501 --model_name=tal_net ...

The stream names and dims are read from the served signature (model metadata), so the
client needs no config. The feature rate (--feature_fps, or each record's) is checked
against the rates the model was trained on, read from the served version's model_info.json
(--model_info, default the one beside --label_map): outside them widened by a factor 1.25 is
a one-line error unless --allow_feature_fps_mismatch (then a warning); without a
model_info.json that records them, the rate is not checked (a warning says so). Long
videos are sent in overlapping windows (`--window_steps`, `--window_overlap`) and merged by
per-class NMS exactly like the offline inference CLI (`python -m
tal_tf.inference.infer_main`), which shares the feature readers and the merge.

Request / response helpers (usable on their own):
  build_predict_request(inputs, model_name, ...) -> predict_pb2.PredictRequest
  parse_predict_response(response) -> {output name: numpy array}
  build_rest_request(inputs, ...) -> JSON-able dict; parse_rest_response(body) -> dict
  signature_from_metadata(...) -> (stream_dims, max_detections)
"""

import collections
import json
import os
import sys
import urllib.error
import urllib.request

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

SERVING_SIGNATURE = "serving_default"
NUM_STEPS_INPUT = "num_steps"
FEATURE_FPS_INPUT = "feature_fps"
NON_STREAM_INPUTS = (NUM_STEPS_INPUT, FEATURE_FPS_INPUT, "examples")
# gRPC refuses messages above 4 MB by default; one 10-minute two-stream I3D video is ~3 MB.
MAX_MESSAGE_BYTES = 1 << 30

# TensorProto dtype enum values (tensorflow/core/framework/types.proto).
_DT_FLOAT, _DT_INT32, _DT_STRING, _DT_INT64 = 1, 3, 7, 9
_TO_DT = {np.dtype(np.float32): _DT_FLOAT, np.dtype(np.int32): _DT_INT32,
          np.dtype(np.int64): _DT_INT64}
_FROM_DT = {v: k for k, v in _TO_DT.items()}
_VALUE_FIELDS = {_DT_FLOAT: "float_val", _DT_INT32: "int_val", _DT_INT64: "int64_val"}


# --------------------------------------------------------------------------- tensors
def ndarray_to_tensor_proto(array):
  """numpy array (float32 / int32 / int64) -> tensorflow TensorProto (packed content)."""
  from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
  array = np.ascontiguousarray(array)
  if array.dtype not in _TO_DT:
    raise ValueError(f"unsupported dtype {array.dtype}; expected float32, int32 or int64")
  proto = tensor_pb2.TensorProto(dtype=_TO_DT[array.dtype])
  for size in array.shape:
    proto.tensor_shape.dim.add(size=size)
  proto.tensor_content = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
  return proto


def tensor_proto_to_ndarray(proto):
  """TensorProto (packed content or repeated *_val fields, or strings) -> numpy array."""
  shape = [d.size for d in proto.tensor_shape.dim]
  if proto.dtype == _DT_STRING:
    return np.array(list(proto.string_val), dtype=object).reshape(shape)
  if proto.dtype not in _FROM_DT:
    raise ValueError(f"unsupported TensorProto dtype {proto.dtype}")
  dtype = _FROM_DT[proto.dtype]
  if proto.tensor_content:
    return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(
        dtype).reshape(shape)
  values = np.asarray(getattr(proto, _VALUE_FIELDS[proto.dtype]), dtype)
  size = int(np.prod(shape)) if shape else 1
  if values.size == size:
    return values.reshape(shape)
  if values.size == 1:  # A repeated single value stands for a constant tensor.
    return np.full(shape, values[0], dtype)
  if size == 0:
    return np.zeros(shape, dtype)
  raise ValueError(f"TensorProto holds {values.size} values for shape {shape}")


def build_predict_request(inputs, model_name, signature_name=SERVING_SIGNATURE,
                          model_version=None):
  """{input name: array} -> PredictRequest for `model_name` (optionally a fixed version)."""
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if model_version is not None:
    request.model_spec.version.value = int(model_version)
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(ndarray_to_tensor_proto(value))
  return request


def parse_predict_response(response):
  """PredictResponse -> {output name: numpy array}."""
  return {name: tensor_proto_to_ndarray(proto) for name, proto in response.outputs.items()}


def build_rest_request(inputs, signature_name=SERVING_SIGNATURE):
  """{input name: array} -> the JSON body of POST /v1/models/<name>:predict (columnar)."""
  return {"signature_name": signature_name,
          "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()}}


class ServingError(RuntimeError):
  """The server answered with an error (HTTP status, gRPC status or TF Serving's own error
  body), or cannot be reached."""


_INT_OUTPUTS = ("detection_classes", "num_detections", "num_proposals")


def parse_rest_response(body):
  """JSON body of a REST predict response -> {output name: numpy array}."""
  if "error" in body:
    raise ServingError(f"TF Serving error: {body['error']}")
  if "outputs" not in body:
    raise ValueError(f"REST response has no 'outputs' (columnar) field: keys {list(body)}")
  out = {}
  for name, value in body["outputs"].items():
    out[name] = np.asarray(value, np.int32 if name in _INT_OUTPUTS else np.float32)
  return out


def signature_from_metadata(signature_def_map, signature_name=SERVING_SIGNATURE):
  """SignatureDefMap proto -> (stream_dims {stream: D}, max_detections N) of a signature."""
  if signature_name not in signature_def_map.signature_def:
    raise ValueError(f"served model has no signature {signature_name!r}; it has "
                     f"{sorted(signature_def_map.signature_def)}")
  sig = signature_def_map.signature_def[signature_name]
  dims = collections.OrderedDict()
  for name in sorted(sig.inputs):
    if name in NON_STREAM_INPUTS:
      continue
    shape = [d.size for d in sig.inputs[name].tensor_shape.dim]
    if len(shape) != 3 or shape[2] < 1:
      raise ValueError(f"signature input {name!r} has shape {shape}, expected [-1, -1, D]")
    dims[name] = shape[2]
  scores = [d.size for d in sig.outputs["detection_scores"].tensor_shape.dim]
  return dims, scores[1]


# --------------------------------------------------------------------------- transports
class GrpcPredictor:
  """Predict / GetModelMetadata over gRPC (TF Serving's port 8500)."""

  def __init__(self, server, model_name, model_version=None, timeout=60.0):
    import grpc  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    self._grpc = grpc
    self._channel = grpc.insecure_channel(server, options=options)
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
    self.server = server
    self.model_name = model_name
    self.model_version = model_version
    self.timeout = timeout

  def _call(self, method, request):
    """One RPC; a failed call (server down, unknown model, deadline) -> ServingError naming
    the server, the model and the status, as RestPredictor does for HTTP."""
    try:
      return getattr(self._stub, method)(request, timeout=self.timeout)
    except self._grpc.RpcError as e:
      code = e.code() if hasattr(e, "code") else None
      details = e.details() if hasattr(e, "details") else str(e)
      status = code.name if code is not None else "error"
      raise ServingError(
          f"{self.server} ({method} of model {self.model_name!r}): gRPC {status}: "
          f"{' '.join(str(details).split())}") from None

  def predict(self, inputs, signature_name=SERVING_SIGNATURE):
    """{input: array} -> {output: array} through one Predict RPC."""
    request = build_predict_request(inputs, self.model_name, signature_name, self.model_version)
    return parse_predict_response(self._call("Predict", request))

  def signature_def_map(self):
    """SignatureDefMap of the served model (GetModelMetadata RPC)."""
    from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=g-import-not-at-top
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = self.model_name
    if self.model_version is not None:
      request.model_spec.version.value = int(self.model_version)
    request.metadata_field.append("signature_def")
    response = self._call("GetModelMetadata", request)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    return sig_map

  def close(self):
    """Closes the channel."""
    self._channel.close()


class RestPredictor:
  """Predict / metadata over TF Serving's REST API (port 8501)."""

  def __init__(self, url, model_name, model_version=None, timeout=60.0):
    self.base = f"{url.rstrip('/')}/v1/models/{model_name}"
    if model_version is not None:
      self.base += f"/versions/{int(model_version)}"
    self.timeout = timeout

  def _request(self, url, body=None):
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
      raise ServingError(f"{url}: HTTP {e.code}: {e.read().decode('utf-8', 'replace')}") from None
    except urllib.error.URLError as e:
      raise ServingError(f"{url}: cannot reach the server ({e.reason})") from None

  def predict(self, inputs, signature_name=SERVING_SIGNATURE):
    """{input: array} -> {output: array} through POST :predict."""
    return parse_rest_response(self._request(self.base + ":predict",
                                             build_rest_request(inputs, signature_name)))

  def signature_def_map(self):
    """SignatureDefMap of the served model (GET /metadata)."""
    from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=g-import-not-at-top
    body = self._request(self.base + "/metadata")
    return json_format.ParseDict(body["metadata"]["signature_def"],
                                 get_model_metadata_pb2.SignatureDefMap(),
                                 ignore_unknown_fields=True)

  def close(self):
    """Nothing to release (one HTTP connection per request)."""


class ServingDetector:
  """A served model with the call interface of tal_tf.inference detectors."""

  def __init__(self, predictor, signature_name=SERVING_SIGNATURE):
    self.predictor = predictor
    self.signature_name = signature_name
    self.stream_dims, self.max_detections = signature_from_metadata(
        predictor.signature_def_map(), signature_name)
    self.config = None
    self.label_map_path = None

  def __call__(self, features, num_steps, feature_fps):
    inputs = {s: np.asarray(features[s], np.float32) for s in self.stream_dims}
    inputs[NUM_STEPS_INPUT] = np.asarray(num_steps, np.int32)
    inputs[FEATURE_FPS_INPUT] = np.asarray(feature_fps, np.float32)
    return self.predictor.predict(inputs, self.signature_name)


# --------------------------------------------------------------------------- the CLI
def define_flags(flag_values=flags.FLAGS):
  """Defines the client's flags on `flag_values` (global FLAGS by default)."""
  fv = flag_values
  flags.DEFINE_string("server", None, "gRPC address host:port of TF Serving.", flag_values=fv)
  flags.DEFINE_string("rest_url", None, "REST base URL, e.g. http://localhost:8501 (instead "
                      "of --server).", flag_values=fv)
  flags.DEFINE_string("model_name", "tal_net", "Served model name.", flag_values=fv)
  flags.DEFINE_integer("model_version", None, "Pin a version (default: the newest served).",
                       flag_values=fv)
  flags.DEFINE_string("features", None, "Per-stream .npy dirs 'rgb:DIR,flow:DIR'.",
                      flag_values=fv)
  flags.DEFINE_string("hdf5_features", None, "HDF5 features (as in infer_main).",
                      flag_values=fv)
  flags.DEFINE_list("tfrecords", None, "SequenceExample TFRecord patterns.", flag_values=fv)
  flags.DEFINE_float("feature_fps", None, "Feature steps per second (npy / HDF5). Checked "
                     "against the model's training rates (--model_info).", flag_values=fv)
  flags.DEFINE_string("model_info", None, "The served version's model_info.json (or its "
                      "version directory), whose training_feature_fps the rate is checked "
                      "against (default: the model_info.json beside --label_map; neither: "
                      "not checked, with a warning).", flag_values=fv)
  from tal_tf.utils import feature_rates  # pylint: disable=g-import-not-at-top
  feature_rates.define_check_flags(fv, "--feature_fps, a record's video/feature_fps",
                                   "records' video/duration")
  flags.DEFINE_list("video_ids", None, "Only these videos.", flag_values=fv)
  flags.DEFINE_string("label_map", None, "Label map for class names (the exported "
                      "<version>/label_map.pbtxt).", flag_values=fv)
  flags.DEFINE_string("output", None, "Results JSON to write.", flag_values=fv)
  flags.DEFINE_integer("window_steps", 0, "Window length in steps (0 = whole videos).",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_float("window_overlap", 0.25, "Overlap of consecutive windows.",
                     flag_values=fv)
  flags.DEFINE_float("nms_iou_threshold", 0.7, "tIoU of the per-class NMS merging windows "
                     "(the model's second-stage NMS threshold).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 1, "Windows per request.", lower_bound=1, flag_values=fv)
  flags.DEFINE_float("timeout", 60.0, "Seconds per request.", flag_values=fv)


def served_model_info(fv):
  """(model_info dict or None, where it came from): --model_info (a file or a version
  directory), else the model_info.json beside --label_map."""
  from tal_tf.export import exporter_lib  # pylint: disable=g-import-not-at-top
  path = getattr(fv, "model_info", None)
  if path:
    if os.path.isdir(path):
      path = os.path.join(path, exporter_lib.MODEL_INFO_NAME)
    if not os.path.isfile(path):
      raise app.UsageError(f"--model_info {fv.model_info!r}: no such file (give the served "
                           "version's model_info.json or its directory)")
  elif fv.label_map:
    path = os.path.join(os.path.dirname(os.path.abspath(fv.label_map)),
                        exporter_lib.MODEL_INFO_NAME)
    if not os.path.isfile(path):
      return None, None
  else:
    return None, None
  info = exporter_lib.read_model_info(os.path.dirname(os.path.abspath(path)))
  return info, path


def rate_check(fv):
  """feature_rates.RateCheck of the served model (from `served_model_info`); a model
  without known training rates is not checked (RateCheck warns)."""
  from tal_tf.utils import feature_rates  # pylint: disable=g-import-not-at-top
  info, path = served_model_info(fv)
  training = (info or {}).get(feature_rates.MODEL_INFO_KEY)
  where = path or f"model {fv.model_name!r} (no --model_info)"
  return feature_rates.RateCheck(training, where, allow=fv.allow_feature_fps_mismatch,
                                 length_tolerance=fv.length_tolerance)


def make_predictor(fv):
  """GrpcPredictor or RestPredictor from --server / --rest_url."""
  if bool(fv.server) == bool(fv.rest_url):
    raise app.UsageError("give exactly one of --server (gRPC) or --rest_url (REST)")
  if not fv.timeout > 0:
    raise app.UsageError(f"--timeout: must be > 0 seconds, got {fv.timeout}")
  if fv.server:
    return GrpcPredictor(fv.server, fv.model_name, fv.model_version, fv.timeout)
  return RestPredictor(fv.rest_url, fv.model_name, fv.model_version, fv.timeout)


def run(fv, predictor=None):
  """Sends every video's features to the server and writes the results JSON; returns the
  tal_tf InferenceResult."""
  from tal_tf.data import label_map_util  # pylint: disable=g-import-not-at-top
  from tal_tf.dataset_tools import feature_readers  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import io as eval_io  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import inference_lib  # pylint: disable=g-import-not-at-top
  if not fv.output:
    raise app.UsageError("--output is required")
  # A given --label_map is checked before any request; without one, the warning that
  # classes are written as class_<id> comes once there are results to write.
  names = (label_map_util.id_to_name_if_exists(fv.label_map, flag="--label_map")
           if fv.label_map else None)
  # Before any request: a rate far from the training rates gives wrong times, not an error.
  check = rate_check(fv)
  if fv.feature_fps is not None:
    check.check_rate(fv.feature_fps, "--feature_fps")
  predictor = predictor or make_predictor(fv)
  try:
    detector = ServingDetector(predictor)
    try:
      source = feature_readers.open_source(
          detector.stream_dims, features=fv.features, hdf5_features=fv.hdf5_features,
          tfrecords=fv.tfrecords, feature_fps=fv.feature_fps, video_ids=fv.video_ids)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    origin = ((lambda video: f"video/feature_fps of {video.where}") if fv.tfrecords
              else "--feature_fps")
    result = inference_lib.run_inference(
        detector, check.videos(source, origin), window_steps=fv.window_steps,
        window_overlap=fv.window_overlap,
        batch_size=fv.batch_size, nms_iou_threshold=fv.nms_iou_threshold)
  finally:
    predictor.close()
  if names is None:
    names = label_map_util.id_to_name_if_exists(None)
  eval_io.write_results(fv.output, inference_lib.to_results(result.detections, names))
  return result


def main(argv):
  """absl entry point: runs the client, prints a summary; exit code 1 if no video."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = run(flags.FLAGS)
  print(f"{len(result.detections)} videos -> {flags.FLAGS.output}")
  if result.stats.get("empty_videos"):
    print(f"{result.stats['empty_videos']} videos have no feature steps (empty feature "
          "files?): written with no detections", file=sys.stderr)
  if result.skipped:
    print(json.dumps({"skipped": result.skipped}, indent=1), file=sys.stderr)
  return 0 if result.detections else 1


if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main, errors=(ServingError,))
