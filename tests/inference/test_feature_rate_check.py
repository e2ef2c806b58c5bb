"""The inference CLI checks the feature rate against the rates the model was trained on
(model_info.json of the export, or the checkpoint's model_dir) and against a video's known
duration: far off is a one-line error, the override flag makes it a warning, in range runs.
The rated tiny export was trained (tiny_model.TRAINING_RATES) at 1.6 and 2.0 steps/s, so
the accepted rates are 1.6 / 1.25 = 1.28 .. 2.0 * 1.25 = 2.5."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.data import sequence_example
from tal_tf.evaluation import io as eval_io
from tal_tf.inference import infer_main
from tal_tf.utils import feature_rates
from tests import cli_util
from tests.export import tiny_model

LENGTHS = {"video_a": 40, "video_b": 23}


def _flags(*args):
  return cli_util.parse_flags(infer_main, *args)


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
  return tiny_model.get_rated_export(tmp_path_factory)


@pytest.fixture(scope="module")
def npy(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("rate_npy"))
  dirs = {s: os.path.join(root, s) for s in tiny_model.STREAM_DIMS}
  for d in dirs.values():
    os.makedirs(d)
  for i, (video_id, t) in enumerate(LENGTHS.items()):
    for s, array in tiny_model.random_features(t, seed=i).items():
      np.save(os.path.join(dirs[s], video_id + ".npy"), array)
  return ",".join(f"{s}:{d}" for s, d in dirs.items())


def _records(path, rate, duration_factor=1.0):
  """The LENGTHS videos as records at `rate`, video/duration = factor x num_steps / rate."""
  with tf.io.TFRecordWriter(path) as writer:
    for i, (video_id, t) in enumerate(LENGTHS.items()):
      writer.write(sequence_example.make_sequence_example(
          video_id, duration_factor * t / rate, rate, tiny_model.random_features(t, seed=i),
          np.zeros((0, 2)), [], []).SerializeToString())
  return path


@pytest.fixture()
def warnings(monkeypatch):
  logged = []
  monkeypatch.setattr(feature_rates.logging, "warning",
                      lambda msg, *args: logged.append(msg % args))
  return logged


@pytest.mark.parametrize("rate", [1.0, 1.27, 2.51, 16.0])
def test_a_rate_outside_the_training_range_is_a_one_line_error(rated, npy, tmp_path, rate):
  output = str(tmp_path / "results.json")
  with pytest.raises(feature_rates.FeatureRateError) as error:
    infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}", f"--features={npy}",
                          f"--feature_fps={rate}", f"--output={output}"))
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"--feature_fps = {rate:g} is outside")
  assert "(1.6..2 steps/s over 3 videos; accepted 1.28..2.5" in message
  assert rated["export_dir"] in message and "--allow_feature_fps_mismatch" in message
  assert not os.path.exists(output)


def test_the_override_warns_and_runs_at_the_given_rate(rated, npy, tmp_path, warnings):
  at_2 = str(tmp_path / "at_2.json")
  infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}", f"--features={npy}",
                        "--feature_fps=2.0", f"--output={at_2}"))
  assert not warnings
  at_1 = str(tmp_path / "at_1.json")
  infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}", f"--features={npy}",
                        "--feature_fps=1.0", "--allow_feature_fps_mismatch",
                        f"--output={at_1}"))
  # One warning (not one per video) naming the value and the range.
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert "--feature_fps = 1 is outside" in warnings[0]
  assert "--allow_feature_fps_mismatch given: running anyway" in warnings[0]
  # The model ran at rate 1.0: the same detections, at twice the times of rate 2.0.
  got_1, got_2 = eval_io.load_results(at_1), eval_io.load_results(at_2)
  assert sorted(got_1) == sorted(LENGTHS)
  for video_id in LENGTHS:
    assert len(got_2[video_id]["scores"]) > 0
    np.testing.assert_allclose(got_1[video_id]["scores"], got_2[video_id]["scores"], atol=1e-6)
    np.testing.assert_allclose(got_1[video_id]["segments"], 2.0 * got_2[video_id]["segments"],
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rate", [1.28, 1.6, 1.8, 2.5])
def test_rates_in_the_range_run_silently(rated, npy, tmp_path, warnings, rate):
  output = str(tmp_path / "results.json")
  result = infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}",
                                 f"--features={npy}", f"--feature_fps={rate}",
                                 f"--output={output}"))
  assert sorted(result.detections) == sorted(LENGTHS) and not warnings


def test_records_windowed_and_checkpoint_paths_check_too(rated, tmp_path, warnings):
  far = _records(str(tmp_path / "far.tfrecord"), 5.0)
  output = str(tmp_path / "results.json")
  for window in ("0", "16"):  # Whole videos and windows of 16 steps.
    with pytest.raises(feature_rates.FeatureRateError,
                       match=rf"^video/feature_fps of {far}\[record 0\] = 5 is outside"):
      infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}",
                            f"--tfrecords={far}", f"--window_steps={window}",
                            f"--output={output}"))
  near = _records(str(tmp_path / "near.tfrecord"), 2.2)
  result = infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}",
                                 f"--tfrecords={near}", "--window_steps=16",
                                 f"--output={output}"))
  assert result.stats["windows"] == 5 and not warnings  # 40 steps: 3 windows, 23: 2.
  # A config + checkpoint read the rates from the checkpoint's model_dir.
  with pytest.raises(feature_rates.FeatureRateError,
                     match=rf"outside .* the model {rated['model_dir']} was trained on"):
    infer_main.run(_flags(f"--pipeline_config={tiny_model_config(rated)}",
                          f"--checkpoint={rated['model_dir']}", f"--tfrecords={far}",
                          f"--output={output}"))


def tiny_model_config(rated):
  return os.path.join(rated["export_dir"], "pipeline.config")


def test_num_steps_far_from_the_records_duration_is_an_error(rated, tmp_path, warnings):
  # video/duration twice num_steps / rate: the rate given is half the videos' real rate.
  bad = _records(str(tmp_path / "bad.tfrecord"), 2.0, duration_factor=2.0)
  output = str(tmp_path / "results.json")
  with pytest.raises(feature_rates.FeatureRateError,
                     match=r"^video video_a \(.*bad.tfrecord\[record 0\]\): 40 steps vs duration "
                     r"40 s x 2 steps/s = 80.0 \(beyond --length_tolerance 0.1\)"):
    infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}", f"--tfrecords={bad}",
                          f"--output={output}"))
  infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}", f"--tfrecords={bad}",
                        "--allow_feature_fps_mismatch", f"--output={output}"))
  assert [w.split(":")[0] for w in warnings] == ["video video_a (" + bad + "[record 0])",
                                                 "video video_b (" + bad + "[record 1])"]
  # Within the converter's tolerance (10 %, at least 2 steps) it passes.
  ok = _records(str(tmp_path / "ok.tfrecord"), 2.0, duration_factor=1.08)
  warnings.clear()
  infer_main.run(_flags(f"--saved_model_dir={rated['export_dir']}", f"--tfrecords={ok}",
                        f"--output={output}"))
  assert not warnings


def test_a_model_without_recorded_rates_is_not_checked(npy, tmp_path, tmp_path_factory,
                                                       warnings):
  older = tiny_model.get_export(tmp_path_factory)  # Exported from a model_dir without it.
  result = infer_main.run(_flags(f"--saved_model_dir={older['export_dir']}",
                                 f"--features={npy}", "--feature_fps=16.0",
                                 f"--output={tmp_path / 'results.json'}"))
  assert sorted(result.detections) == sorted(LENGTHS)
  # Once, not per video (absl's other warnings are caught here too).
  assert sum("the feature rate is not checked" in w for w in warnings) == 1
