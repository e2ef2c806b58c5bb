"""The serving client on a model reading frames (S-CNN with the C3D backbone): uint8
TensorProtos, the frames signature read from the model metadata, --video decoded at the
model's frame rate and sent over gRPC and REST (whole videos and windows in frames) with
results equal to infer_main's on the same export and videos; one-line usage errors.
(A model reading features and frames: tests/inference/test_etp_mixed_inference.py.)"""
import json
import os

from absl import app
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2

from tal_tf.core import stream_spec
from tal_tf.export import exporter_lib
from tal_tf.inference import infer_main
from tal_tf.video import synthetic
from tests import cli_util
from tests.export import cli_loader
from tests.export import frames_model
from tests.export import serving_stand_ins

client = cli_loader.load_serving_client()
H, W, FPS = frames_model.H, frames_model.W, frames_model.FPS
VIDEO_FRAMES = {"a": 36, "b": 22}  # Written and decoded at FPS.


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The tiny frames model exported, its stand-in server state and two synthetic videos."""
  root = tmp_path_factory.mktemp("serving_frames")
  export_dir = frames_model.export_untrained(frames_model.config(), root)
  videos = root / "videos"
  videos.mkdir()
  for i, (video_id, n) in enumerate(VIDEO_FRAMES.items()):
    synthetic.write_video(str(videos / f"{video_id}.mp4"), n, FPS, 64, 48,
                          actions=[(1.0, 2.5, i % 2)])
  return dict(root=root, export_dir=export_dir, videos=str(videos),
              served=serving_stand_ins.load_served(export_dir))


def _offline(setup, output, *extra):
  """infer_main on the export and the videos (the results JSON as a dict)."""
  infer_main.run(cli_util.parse_flags(
      infer_main, f"--saved_model_dir={setup['export_dir']}", f"--video={setup['videos']}",
      f"--output={output}", *extra))
  with open(output) as f:
    return json.load(f)


def test_uint8_tensor_protos_round_trip_with_tensorflow():
  frames = np.random.default_rng(0).integers(0, 256, [2, 3, 4, 5, 3]).astype(np.uint8)
  proto = client.ndarray_to_tensor_proto(frames)
  assert proto.dtype == tf.uint8.as_datatype_enum == 4
  np.testing.assert_array_equal(tf.make_ndarray(proto), frames)  # TF's own decoder.
  back = client.tensor_proto_to_ndarray(tf.make_tensor_proto(frames))  # TF's own encoder.
  assert back.dtype == np.uint8
  np.testing.assert_array_equal(back, frames)
  # One repeated value (int_val) stands for a constant tensor.
  filled = client.tensor_proto_to_ndarray(tf.make_tensor_proto(np.uint8(7), shape=[2, 2]))
  np.testing.assert_array_equal(filled, np.full([2, 2], 7, np.uint8))
  body = json.loads(json.dumps(client.build_rest_request({"frames": frames})))
  assert body["inputs"]["frames"][1][2][3][4] == frames[1, 2, 3, 4].tolist()


def test_signature_gives_the_frame_stream(setup):
  sig_map = setup["served"]["sig_map"]
  dims, max_detections, side = client.signature_from_metadata(sig_map)
  assert dict(dims) == {"frames": stream_spec.FrameStream(H, W, 0.0)} and side is None
  assert max_detections == 10
  dims, _, _ = client.signature_from_metadata(sig_map, frame_rates={"frames": FPS})
  assert dims["frames"] == stream_spec.FrameStream(H, W, FPS)
  assert set(client.NON_STREAM_INPUTS) == set(exporter_lib.RESERVED_INPUT_NAMES)


def _with_input(sig_map, name, dtype, shape):
  out = get_model_metadata_pb2.SignatureDefMap()
  out.CopyFrom(sig_map)
  info = out.signature_def["serving_default"].inputs[name]
  info.dtype = dtype
  info.tensor_shape.Clear()
  for size in shape:
    info.tensor_shape.dim.add(size=size)
  return out


@pytest.mark.parametrize("name, dtype, shape, message", [
    ("mask", 1, [-1, -1], r"^signature 'serving_default' input 'mask' is float32 \[-1, -1\]: "
                          r"expected float32 features \[-1, -1, D\] or uint8 frames"),
    ("frames", 4, [-1, -1, H, W, 1], r"input 'frames' is uint8 \[-1, -1, 24, 32, 1\]"),
    ("frames", 1, [-1, -1, H, W, 3], r"input 'frames' is float32 \[-1, -1, 24, 32, 3\]"),
])
def test_unexpected_input_is_one_line_naming_it(setup, name, dtype, shape, message):
  with pytest.raises(ValueError, match=message) as error:
    client.signature_from_metadata(_with_input(setup["served"]["sig_map"], name, dtype, shape))
  assert "\n" not in str(error.value)


def test_frames_without_their_length_input_is_an_error(setup):
  sig_map = get_model_metadata_pb2.SignatureDefMap()
  sig_map.CopyFrom(setup["served"]["sig_map"])
  del sig_map.signature_def["serving_default"].inputs["num_frames"]
  with pytest.raises(ValueError, match=r"lacks the inputs \['num_frames'\]"):
    client.signature_from_metadata(sig_map)


def test_grpc_whole_videos_equal_offline_inference(setup, tmp_path):
  with serving_stand_ins.grpc_server(setup["served"]) as (address, service):
    output = str(tmp_path / "served.json")
    result = client.run(cli_util.parse_flags(
        client, f"--server={address}", f"--video={setup['videos']}", f"--frame_rate={FPS}",
        f"--output={output}", "--batch_size=2"))
  assert sorted(result.detections) == ["a", "b"] and not result.skipped
  (request,) = service.requests  # Both videos in one request, padded to 36 frames.
  assert sorted(request.inputs) == ["fps", "frames", "num_frames"]
  sig = setup["served"]["sig_map"].signature_def["serving_default"]
  for name, proto in request.inputs.items():
    assert proto.dtype == sig.inputs[name].dtype, name
  assert tf.make_ndarray(request.inputs["frames"]).shape == (2, 36, H, W, 3)
  assert tf.make_ndarray(request.inputs["num_frames"]).tolist() == [36, 22]
  assert tf.make_ndarray(request.inputs["fps"]).tolist() == [FPS, FPS]
  with open(output) as f:
    got = json.load(f)
  # The same batches offline: a batch of 2 padded videos and two batches of 1 agree only to
  # float rounding.
  assert got == _offline(setup, str(tmp_path / "offline.json"), "--batch_size=2")
  assert sum(len(v) for v in got["results"].values()) > 0


def test_rest_windows_in_frames_equal_offline_inference(setup, tmp_path):
  windows = ("--window_steps=16", "--window_overlap=0.5", "--nms_iou_threshold=0.5",
             "--batch_size=3")
  with serving_stand_ins.rest_server(setup["served"]) as (url, bodies):
    output = str(tmp_path / "served.json")
    # The frame rate from the export's model_info.json.
    result = client.run(cli_util.parse_flags(
        client, f"--rest_url={url}", f"--video={setup['videos']}",
        f"--model_info={setup['export_dir']}", f"--output={output}", *windows))
  # a: 36 frames, stride 8 -> starts 0, 8, 16, 20 (end-aligned); b: 22 -> 0, 6.
  assert result.stats["windows"] == 4 + 2
  assert [b["inputs"]["num_frames"] for b in bodies] == [[16, 16, 16], [16, 16, 16]]
  frames = bodies[0]["inputs"]["frames"]
  assert np.asarray(frames).shape == (3, 16, H, W, 3)
  assert isinstance(frames[0][0][0][0][0], int)  # uint8 as JSON integers.
  with open(output) as f:
    got = json.load(f)
  assert got == _offline(setup, str(tmp_path / "offline.json"), *windows)
  assert sum(len(v) for v in got["results"].values()) > 0


@pytest.mark.parametrize("args, message", [
    (("--features=frames:{root}",), r"^this model reads only frames \(stream 'frames'\): give "
                                    r"--video alone .*, not --features$"),
    (("--video={videos}", "--features=frames:{root}", f"--frame_rate={FPS}"),
     r"reads only frames .*, not --features$"),
    (("--video={videos}",), r"^this model reads the frames stream 'frames' at a rate its "
                            r"signature does not carry \(no --model_info\): give --frame_rate "
                            r"or --model_info=<export version dir>/model_info.json$"),
    (("--video={videos}", "--frame_rate=-2"), r"--frame_rate: must be > 0"),
    (("--video={videos}", "--model_info={bad_info}"),
     r"describes streams \['rgb'\], the served model reads \['frames'\]"),
])
def test_wrong_combinations_are_one_line_errors(setup, tmp_path, args, message):
  bad_info = tmp_path / "model_info.json"
  bad_info.write_text(json.dumps({"stream_names": ["rgb"], "inputs": {
      "streams": {"rgb": {"type": "features", "dim": 4}}}}))
  args = [a.format(root=setup["root"], videos=setup["videos"], bad_info=bad_info)
          for a in args]
  with serving_stand_ins.grpc_server(setup["served"]) as (address, service):
    fv = cli_util.parse_flags(client, f"--server={address}",
                              f"--output={tmp_path / 'r.json'}", *args)
    with pytest.raises((app.UsageError, ValueError), match=message) as error:
      client.run(fv)
  assert "\n" not in str(error.value)
  assert not service.requests and not os.path.exists(tmp_path / "r.json")


def test_cli_without_a_frame_rate_prints_one_line(setup, tmp_path):
  """The script in its own process against the stand-in server: one usage line, no request,
  no output."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("TAL_TF_TRACEBACK", None)
  with serving_stand_ins.grpc_server(setup["served"]) as (address, service):
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "export", "serving_client.py"),
         f"--server={address}", f"--video={setup['videos']}",
         f"--output={tmp_path / 'out.json'}"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr  # Usage.
  assert lines[-1].startswith("serving_client: error: this model reads the frames stream "
                              "'frames' at a rate"), proc.stderr
  assert not service.requests and not (tmp_path / "out.json").exists()
