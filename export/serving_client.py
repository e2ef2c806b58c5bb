r"""Client for a tal_tf model served by TensorFlow Serving: feature files or videos -> results JSON.

  # gRPC (port 8500 of tensorflow/serving):
  python export/serving_client.py --server=localhost:8500 --model_name=tal_net \
      --features=rgb:feats/rgb,flow:feats/flow --feature_fps=0.625 \
      --label_map=serving/tal_net/1/label_map.pbtxt --output=results.json
  # REST (port 8501) instead:
  python export/serving_client.py --rest_url=http://localhost:8501 --model_name=tal_net ...
  # A model reading frames (S-CNN with the C3D backbone): videos, decoded at its frame rate
  python export/serving_client.py --server=localhost:8500 --model_name=scnn_c3d \
      --video=videos/ --model_info=serving/scnn_c3d/1 --window_steps=512 --output=results.json
  # A model reading features and frames (ETP with the frame Actionness Network): both
  python export/serving_client.py --server=localhost:8500 --model_name=etp \
      --features=rgb:feats/rgb,flow:feats/flow --feature_fps=0.625 --video=videos/ \
      --label_map=serving/etp/1/label_map.pbtxt --output=results.json

The stream names and their kinds are read from the served signature (model metadata), so
the client needs no config: a float32 [-1, -1, D] input is a feature stream, a uint8
[-1, -1, H, W, 3] input a frames stream, num_steps / feature_fps / num_frames / fps /
examples are not streams, and anything else is a one-line error naming the input. The inputs
are chosen as in the offline inference CLI (`python -m tal_tf.inference.infer_main`, whose
feature_source this client calls): a feature model takes one of --features, --hdf5_features,
--tfrecords (or --video with --feature_extractor); a frames model --video alone (a file or a
folder), decoded at the model's frame size and rate and sent as uint8 frames + num_frames +
fps; a model reading features and one frames stream a feature source and --video, matched by
video id, each window with the frames of its time span. The signature does not carry the
frame rate: it comes from --frame_rate, else from the served version's model_info.json
(--model_info, a file or the version directory; default the model_info.json beside
--label_map, which the export writes beside label_map.pbtxt); a frames model with neither is
a one-line usage error. model_info.json also gives the model's stream order (the signature's
is alphabetical), which splits a concatenated --hdf5_features file as infer_main does.

Long videos are sent in overlapping windows (`--window_steps`, in feature steps, or in
frames for a frames model; `--window_overlap`) and merged by per-class NMS exactly like
infer_main, which shares the readers, the windowing and the merge (run_inference), so both
write the same results JSON for the same export and inputs.

The rate of every video (--feature_fps, each record's video/feature_fps, or a frames model's
frame rate) is checked against the rates the model was trained on, read from the served
version's model_info.json (`training_feature_fps`): outside them widened by a factor 1.25 is
a one-line error unless --allow_feature_fps_mismatch (then a warning); without a
model_info.json that records them, the rate is not checked (a warning says so).

Request / response helpers (usable on their own):
  build_predict_request(inputs, model_name, ...) -> predict_pb2.PredictRequest
  parse_predict_response(response) -> {output name: numpy array}
  build_rest_request(inputs, ...) -> JSON-able dict; parse_rest_response(body) -> dict
  (float32, int32, int64 and uint8 tensors; REST sends uint8 frames as integer lists)
  signature_from_metadata(...) -> ServedSignature(stream_dims, max_detections, side_stream)
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
NUM_FRAMES_INPUT = "num_frames"
FPS_INPUT = "fps"
# The signature's inputs that are not streams (tal_tf.export.exporter_lib.RESERVED_INPUT_NAMES;
# repeated here so that the request helpers need no tal_tf import).
NON_STREAM_INPUTS = (NUM_STEPS_INPUT, FEATURE_FPS_INPUT, "examples", NUM_FRAMES_INPUT,
                     FPS_INPUT)
# gRPC refuses messages above 4 MB by default; one 10-minute two-stream I3D video is ~3 MB.
MAX_MESSAGE_BYTES = 1 << 30

# TensorProto dtype enum values (tensorflow/core/framework/types.proto).
_DT_FLOAT, _DT_INT32, _DT_UINT8, _DT_STRING, _DT_INT64 = 1, 3, 4, 7, 9
_TO_DT = {np.dtype(np.float32): _DT_FLOAT, np.dtype(np.int32): _DT_INT32,
          np.dtype(np.uint8): _DT_UINT8, np.dtype(np.int64): _DT_INT64}
_FROM_DT = {v: k for k, v in _TO_DT.items()}
# uint8 values, when not packed, travel in int_val (as TF writes them).
_VALUE_FIELDS = {_DT_FLOAT: "float_val", _DT_INT32: "int_val", _DT_UINT8: "int_val",
                 _DT_INT64: "int64_val"}
_DT_NAMES = {_DT_FLOAT: "float32", _DT_INT32: "int32", _DT_UINT8: "uint8",
             _DT_STRING: "string", _DT_INT64: "int64"}


# --------------------------------------------------------------------------- tensors
def ndarray_to_tensor_proto(array):
  """numpy array (float32 / int32 / uint8 / int64) -> tensorflow TensorProto (packed
  content)."""
  from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
  array = np.ascontiguousarray(array)
  if array.dtype not in _TO_DT:
    raise ValueError(f"unsupported dtype {array.dtype}; expected float32, int32, uint8 or "
                     "int64")
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
  """{input name: array} -> the JSON body of POST /v1/models/<name>:predict (columnar; uint8
  frames as nested lists of integers, which TF Serving converts to the signature's dtype)."""
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


ServedSignature = collections.namedtuple(
    "ServedSignature", ["stream_dims", "max_detections", "side_stream"])
ServedSignature.__doc__ = """What the client needs of a served signature: stream_dims
{stream: D (float32 features [B, T, D]) or tal_tf.core.stream_spec.FrameStream(height, width,
fps) (uint8 frames [B, T, H, W, 3])}, in the order of `stream_order` when given, else
alphabetical; max_detections N; side_stream: the frames stream of a model that also reads
feature streams (fed with num_frames / fps beside num_steps / feature_fps), else None."""


def _input_description(tensor_info):
  shape = [d.size for d in tensor_info.tensor_shape.dim]
  return f"{_DT_NAMES.get(tensor_info.dtype, f'dtype {tensor_info.dtype}')} {shape}"


def signature_from_metadata(signature_def_map, signature_name=SERVING_SIGNATURE,
                            frame_rates=None, stream_order=None):
  """SignatureDefMap proto -> ServedSignature of `signature_name`.

  A stream input is float32 [-1, -1, D] (features) or uint8 [-1, -1, H, W, 3] (frames); the
  reserved inputs (num_steps, feature_fps, examples, num_frames, fps) are not streams. The
  signature does not carry the frame rate: `frame_rates` {stream: frames per second} (e.g.
  from model_info.json) gives it, else it is 0 (unknown). An input of any other shape or
  dtype, or a frames stream without the num_frames / fps inputs, is a one-line ValueError
  naming it.
  """
  from tal_tf.core import stream_spec  # pylint: disable=g-import-not-at-top
  if signature_name not in signature_def_map.signature_def:
    raise ValueError(f"served model has no signature {signature_name!r}; it has "
                     f"{sorted(signature_def_map.signature_def)}")
  sig = signature_def_map.signature_def[signature_name]
  dims = collections.OrderedDict()
  for name in sorted(sig.inputs):
    if name in NON_STREAM_INPUTS:
      continue
    info = sig.inputs[name]
    shape = [d.size for d in info.tensor_shape.dim]
    if info.dtype == _DT_FLOAT and len(shape) == 3 and shape[2] >= 1:
      dims[name] = shape[2]
    elif (info.dtype == _DT_UINT8 and len(shape) == 5 and shape[4] == 3 and shape[2] >= 1
          and shape[3] >= 1):
      fps = float((frame_rates or {}).get(name) or 0.0)
      dims[name] = stream_spec.FrameStream(shape[2], shape[3], fps)
    else:
      raise ValueError(
          f"signature {signature_name!r} input {name!r} is {_input_description(info)}: "
          "expected float32 features [-1, -1, D] or uint8 frames [-1, -1, H, W, 3] (or one of "
          f"the inputs {list(NON_STREAM_INPUTS)})")
  if not dims:
    raise ValueError(f"signature {signature_name!r} has no stream input (inputs "
                     f"{sorted(sig.inputs)})")
  if stream_order is not None and sorted(stream_order) == sorted(dims):
    dims = collections.OrderedDict((s, dims[s]) for s in stream_order)
  frames = [s for s, d in dims.items() if stream_spec.is_frames(d)]
  needed = []
  if len(frames) < len(dims):
    needed += [NUM_STEPS_INPUT, FEATURE_FPS_INPUT]
  if frames:
    needed += [NUM_FRAMES_INPUT, FPS_INPUT]
  missing = [n for n in needed if n not in sig.inputs]
  if len(frames) > 1 or missing:
    raise ValueError(
        f"signature {signature_name!r} reads streams {dict(dims)} but "
        + (f"lacks the inputs {missing}" if missing else "more than one frames stream")
        + ": not a tal_tf export this client can feed")
  scores = [d.size for d in sig.outputs["detection_scores"].tensor_shape.dim]
  side = frames[0] if frames and len(frames) < len(dims) else None
  return ServedSignature(dims, scores[1], side)


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
  """A served model with the call interface of tal_tf.inference detectors:
  detector(features, num_steps, feature_fps, side=None) -> {output: array}.

  Feature models take features {stream: float32 [B, T, D]}, num_steps [B] and feature_fps
  [B]. A frames model takes features {stream: uint8 [B, T, H, W, 3]} with num_steps in frames
  and feature_fps the frame rate, sent as num_frames / fps. A model reading feature streams
  plus a frames stream (`side_stream`) also takes side = (frames uint8 [B, F, H, W, 3],
  num_frames [B], fps [B]).
  """

  def __init__(self, predictor, signature_name=SERVING_SIGNATURE, model_info=None):
    """model_info: the served version's model_info.json as a dict (frame rate, stream
    order, has_proposals), or None."""
    from tal_tf.core import stream_spec  # pylint: disable=g-import-not-at-top
    self.predictor = predictor
    self.signature_name = signature_name
    self.model_info = model_info
    info = model_info or {}
    streams = (info.get("inputs") or {}).get("streams") or {}
    rates = {s: v.get("fps") for s, v in streams.items() if v.get("type") == "frames"}
    self.stream_dims, self.max_detections, self.side_stream = signature_from_metadata(
        predictor.signature_def_map(), signature_name, frame_rates=rates,
        stream_order=info.get("stream_names"))
    if streams and sorted(streams) != sorted(self.stream_dims):
      raise ValueError(f"the model_info.json given describes streams {sorted(streams)}, the "
                       f"served model reads {sorted(self.stream_dims)}: give the served "
                       "version's model_info.json")
    self._frames_only = all(stream_spec.is_frames(d) for d in self.stream_dims.values())
    self._dtypes = {s: stream_spec.dtype(d).as_numpy_dtype for s, d in self.stream_dims.items()}
    self.config = None
    self.label_map_path = None

  def __call__(self, features, num_steps, feature_fps, side=None):
    inputs = {s: np.asarray(features[s], dtype) for s, dtype in self._dtypes.items()
              if s != self.side_stream}
    if self._frames_only:
      inputs[NUM_FRAMES_INPUT] = np.asarray(num_steps, np.int32)
      inputs[FPS_INPUT] = np.asarray(feature_fps, np.float32)
    else:
      inputs[NUM_STEPS_INPUT] = np.asarray(num_steps, np.int32)
      inputs[FEATURE_FPS_INPUT] = np.asarray(feature_fps, np.float32)
    if self.side_stream is not None:
      if side is None:
        raise ValueError(f"this model also reads the frames stream {self.side_stream!r}: "
                         "pass side = (frames, num_frames, fps)")
      inputs[self.side_stream] = np.asarray(side[0], np.uint8)
      inputs[NUM_FRAMES_INPUT] = np.asarray(side[1], np.int32)
      inputs[FPS_INPUT] = np.asarray(side[2], np.float32)
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
  flags.DEFINE_string("video", None, "A video file or a folder of videos: the frames of a "
                      "model reading frames (alone), or of a model reading features and frames "
                      "(with one feature source, matched by video id); for a feature model, "
                      "featurized with --feature_extractor. As in infer_main.", flag_values=fv)
  flags.DEFINE_string("feature_extractor", None, "feature_extractor.json (with --video and a "
                      "model reading features only).", flag_values=fv)
  flags.DEFINE_float("frame_rate", None, "With --video and a model reading frames: frames "
                     "per second to decode at (default: the rate in --model_info).",
                     flag_values=fv)
  flags.DEFINE_string("model_info", None, "The served version's model_info.json (or its "
                      "version directory): the frame rate a frames model was trained on, the "
                      "model's stream order and the training feature rates the rate is "
                      "checked against (default: the model_info.json beside --label_map; "
                      "neither: not checked, with a warning).", flag_values=fv)
  from tal_tf.utils import feature_rates  # pylint: disable=g-import-not-at-top
  feature_rates.define_check_flags(fv, "--feature_fps, a record's video/feature_fps, "
                                   "--frame_rate", "records' video/duration; the video of "
                                   "--video with a feature source")
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


def rate_check(fv, served=None):
  """feature_rates.RateCheck of the served model; served: (model_info, its path) as
  `served_model_info(fv)` returns them (read here when not given). A model without known
  training rates is not checked (RateCheck warns)."""
  from tal_tf.utils import feature_rates  # pylint: disable=g-import-not-at-top
  info, info_path = served if served is not None else served_model_info(fv)
  training = (info or {}).get(feature_rates.MODEL_INFO_KEY)
  where = info_path or f"model {fv.model_name!r} (no --model_info)"
  return feature_rates.RateCheck(training, where, allow=fv.allow_feature_fps_mismatch,
                                 length_tolerance=fv.length_tolerance)


def _reads_frames_only(info):
  """True when model_info.json says every stream of the model is frames (its rate is the
  frame rate, not --feature_fps)."""
  streams = ((info or {}).get("inputs") or {}).get("streams") or {}
  return bool(streams) and all(v.get("type") == "frames" for v in streams.values())


def make_predictor(fv):
  """GrpcPredictor or RestPredictor from --server / --rest_url."""
  if bool(fv.server) == bool(fv.rest_url):
    raise app.UsageError("give exactly one of --server (gRPC) or --rest_url (REST)")
  if not fv.timeout > 0:
    raise app.UsageError(f"--timeout: must be > 0 seconds, got {fv.timeout}")
  if fv.server:
    return GrpcPredictor(fv.server, fv.model_name, fv.model_version, fv.timeout)
  return RestPredictor(fv.rest_url, fv.model_name, fv.model_version, fv.timeout)


def _check_frame_rate(fv, detector, info_path):
  """A model reading frames needs their rate, which its signature does not carry."""
  from tal_tf.core import stream_spec  # pylint: disable=g-import-not-at-top
  if fv.frame_rate is not None and not fv.frame_rate > 0:
    raise app.UsageError(f"--frame_rate: must be > 0 frames per second, got {fv.frame_rate}")
  frames = [s for s, d in detector.stream_dims.items() if stream_spec.is_frames(d)]
  # Without --video, the source's usage error says what to give.
  if not frames or not fv.video or fv.frame_rate or detector.stream_dims[frames[0]].fps:
    return
  where = f"{info_path} records none" if info_path else "no --model_info"
  raise app.UsageError(f"this model reads the frames stream {frames[0]!r} at a rate its "
                       f"signature does not carry ({where}): give --frame_rate or "
                       "--model_info=<export version dir>/model_info.json")


def run(fv, predictor=None):
  """Sends every video's features to the server and writes the results JSON; returns the
  tal_tf InferenceResult."""
  from tal_tf.data import label_map_util  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import io as eval_io  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import infer_main  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import inference_lib  # pylint: disable=g-import-not-at-top
  if not fv.output:
    raise app.UsageError("--output is required")
  # A given --label_map is checked before any request; without one, the warning that
  # classes are written as class_<id> comes once there are results to write.
  names = (label_map_util.id_to_name_if_exists(fv.label_map, flag="--label_map")
           if fv.label_map else None)
  info, info_path = served_model_info(fv)
  # Before any request: a rate far from the training rates gives wrong times, not an error.
  check = rate_check(fv, (info, info_path))
  if fv.feature_fps is not None and not _reads_frames_only(info):
    check.check_rate(fv.feature_fps, "--feature_fps")
  predictor = predictor or make_predictor(fv)
  try:
    detector = ServingDetector(predictor, model_info=info)
    _check_frame_rate(fv, detector, info_path)
    source = infer_main.feature_source(fv, detector.stream_dims)
    origin = infer_main.rate_origin(fv, detector.stream_dims)
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
  if result.stats.get("frame_unaligned_videos"):
    print(f"{result.stats['frame_unaligned_videos']} videos: frame and feature rates without "
          "whole-frame window starts; each window got the frames nearest its span (off by at "
          "most half a frame)", file=sys.stderr)
  if result.skipped:
    print(json.dumps({"skipped": result.skipped}, indent=1), file=sys.stderr)
  return 0 if result.detections else 1


if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main, errors=(ServingError,))
