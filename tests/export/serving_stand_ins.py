"""In-process stand-ins for TF Serving that run an exported SavedModel.

There is no TF Serving binary on these machines, so these servers implement the same Predict
/ GetModelMetadata (gRPC) and :predict / metadata (REST) messages; the requests a client sends
and the responses it parses are TF Serving's own protos / JSON, decoded and encoded with
TensorFlow's own tf.make_ndarray / tf.make_tensor_proto.
"""
from concurrent import futures
import contextlib
import http.server
import json
import os
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc


def load_served(export_dir, loaded=None):
  """{loaded: the SavedModel, sig_map: its SignatureDefMap, export_dir}, as a server holds
  them (`loaded`: an already loaded SavedModel of export_dir, to save the load)."""
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  sig_map = get_model_metadata_pb2.SignatureDefMap()
  for name, sig in saved.meta_graphs[0].signature_def.items():
    if not name.startswith("__"):
      sig_map.signature_def[name].CopyFrom(sig)
  return dict(loaded=loaded or tf.saved_model.load(export_dir), sig_map=sig_map,
              export_dir=export_dir)


def run_signature(served, name, arrays):
  """{input: array} -> {output: numpy array} through the signature `name`."""
  fn = served["loaded"].signatures[name]
  return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in arrays.items()}).items()}


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Answers Predict and GetModelMetadata from the loaded SavedModel; keeps the requests."""

  def __init__(self, served):
    self.served = served
    self.requests = []

  def Predict(self, request, context):  # pylint: disable=invalid-name
    self.requests.append(request)
    arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    outputs = run_signature(self.served, request.model_spec.signature_name, arrays)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
      response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response

  def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.CopyFrom(request.model_spec)
    response.metadata["signature_def"].Pack(self.served["sig_map"])
    return response


@contextlib.contextmanager
def grpc_server(served):
  """Yields (address host:port, PredictionService) of a gRPC server running `served`."""
  service = PredictionService(served)
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  try:
    yield f"127.0.0.1:{port}", service
  finally:
    server.stop(0)


class _RestHandler(http.server.BaseHTTPRequestHandler):
  """TF Serving's REST routes for one model, answered from the SavedModel."""
  served = None
  model_name = None
  bodies = None

  def _reply(self, body, code=200):
    data = json.dumps(body).encode("utf-8")
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_GET(self):  # pylint: disable=invalid-name
    if self.path == f"/v1/models/{self.model_name}/metadata":
      sig = json_format.MessageToDict(self.served["sig_map"], preserving_proto_field_name=True)
      self._reply({"model_spec": {"name": self.model_name},
                   "metadata": {"signature_def": sig}})
    else:
      self._reply({"error": f"no route {self.path}"}, 404)

  def do_POST(self):  # pylint: disable=invalid-name
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    if self.path != f"/v1/models/{self.model_name}:predict":
      return self._reply({"error": f"no route {self.path}"}, 404)
    self.bodies.append(body)
    sig = self.served["sig_map"].signature_def[body["signature_name"]]
    # As TF Serving: JSON numbers take the dtype of the signature's input.
    arrays = {k: np.asarray(v, tf.dtypes.as_dtype(sig.inputs[k].dtype).as_numpy_dtype)
              for k, v in body["inputs"].items()}
    outputs = run_signature(self.served, body["signature_name"], arrays)
    return self._reply({"outputs": {k: v.tolist() for k, v in outputs.items()}})

  def log_message(self, *args):
    pass


@contextlib.contextmanager
def rest_server(served, model_name="tal_net"):
  """Yields (base URL, list of the predict bodies received) of a REST server running
  `served` as `model_name`."""
  bodies = []
  handler = type("Handler", (_RestHandler,), dict(served=served, model_name=model_name,
                                                  bodies=bodies))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{httpd.server_address[1]}", bodies
  finally:
    httpd.shutdown()
    httpd.server_close()
