"""The serving client when the server is down or refuses: one line naming the server, the
model and the gRPC status (as for REST), not a grpc traceback."""

import os
import socket
import subprocess
import sys
from concurrent import futures

from absl import app
from absl import flags
import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from export import serving_client as client
from tests import cli_util

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unused_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_grpc_server_down_is_a_serving_error_naming_it():
  port = _unused_port()
  predictor = client.GrpcPredictor(f"127.0.0.1:{port}", "tal_net", timeout=5.0)
  try:
    with pytest.raises(client.ServingError,
                       match=rf"^127\.0\.0\.1:{port} \(GetModelMetadata of model 'tal_net'\): "
                             r"gRPC UNAVAILABLE: "):
      predictor.signature_def_map()
    with pytest.raises(client.ServingError, match=r"\(Predict of model 'tal_net'\): gRPC "
                                                  r"UNAVAILABLE"):
      predictor.predict({"num_steps": np.array([1], np.int32)})
  finally:
    predictor.close()


def test_grpc_server_refusing_the_call_is_a_serving_error():
  # The base servicer answers every method with UNIMPLEMENTED, as a server of another
  # service on that port would.
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      prediction_service_pb2_grpc.PredictionServiceServicer(), server)
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  predictor = client.GrpcPredictor(f"127.0.0.1:{port}", "tal_net", timeout=10.0)
  try:
    with pytest.raises(client.ServingError, match=r"gRPC UNIMPLEMENTED: Method not "
                                                  r"implemented"):
      predictor.signature_def_map()
  finally:
    predictor.close()
    server.stop(0)


def test_timeout_must_be_positive():
  fv = cli_util.parse_flags(client, "--rest_url=http://127.0.0.1:1", "--timeout=0")
  with pytest.raises(app.UsageError, match=r"--timeout: must be > 0 seconds, got 0\.0"):
    client.make_predictor(fv)


def test_cli_with_the_server_down_prints_one_line(tmp_path):
  features = tmp_path / "rgb"
  features.mkdir()
  np.save(features / "v.npy", np.zeros((4, 3), np.float32))
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("TAL_TF_TRACEBACK", None)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "export", "serving_client.py"),
       f"--server=127.0.0.1:{_unused_port()}", f"--features=rgb:{features}",
       "--feature_fps=1", f"--output={tmp_path / 'out.json'}", "--timeout=5"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  assert lines[-1].startswith("serving_client: error: 127.0.0.1:"), proc.stderr
  assert "gRPC UNAVAILABLE" in lines[-1]
  assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("define", ["serving_client", "infer_main"])
def test_negative_window_steps_is_a_flag_error(define):
  # Before, -5 was taken silently as "whole videos" (0).
  from tal_tf.inference import infer_main  # pylint: disable=g-import-not-at-top
  with pytest.raises(flags.IllegalFlagValueError, match="window_steps"):
    cli_util.parse_flags(client if define == "serving_client" else infer_main,
                         "--window_steps=-5")
