"""Every CLI reports a bad input, flag or file as one line on stderr (program, file / field /
flag, the problem) with exit code 2, and no traceback (tal_tf.utils.cli)."""
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.data import label_map_util
from tal_tf.data import sequence_example
from tal_tf.utils import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
model {{ tal_net {{ num_classes: 2 streams: "rgb" feature_reduction_dim: 4 num_filters: 4 }} }}
train_config {{ num_steps: 2 optimizer {{ adam {{}}
  learning_rate {{ constant {{ learning_rate: {lr} }} }} }} }}
train_input_reader {{ input_path: "{records}" label_map_path: "{label_map}"
                     streams {{ name: "rgb" dim: {dim} }} }}
eval_input_reader {{ input_path: "{records}" streams {{ name: "rgb" dim: {dim} }} }}
"""


def _cases(work):
  """{name: (argv, exit code, substrings of the one stderr line)}."""
  records = os.path.join(work, "train.tfrecord")
  example = sequence_example.make_sequence_example(
      "v1", 4.0, 1.0, {"rgb": np.zeros((4, 3), np.float32)}, np.array([[1.0, 2.0]]), [1],
      ["A"])
  with tf.io.TFRecordWriter(records) as writer:
    writer.write(example.SerializeToString())
  label_map = os.path.join(work, "labels.pbtxt")
  label_map_util.write_label_map(label_map, [(1, "A"), (2, "B")])
  configs = {}
  for name, lr, dim in (("bad_lr", -0.1, 3), ("bad_dim", 0.1, 5), ("good", 0.1, 3)):
    configs[name] = os.path.join(work, name + ".config")
    with open(configs[name], "w") as f:
      f.write(CONFIG.format(lr=lr, dim=dim, records=records, label_map=label_map))
  with open(os.path.join(work, "annotations.json"), "w") as f:
    f.write('{"database": {}}')
  with open(os.path.join(work, "results.json"), "w") as f:
    f.write("not json")
  py_m = lambda module: ["-m", module]  # pylint: disable=unnecessary-lambda-assignment
  # `-m train_main` with the checkout on PYTHONPATH, not the script's path: Python resolves a
  # script's symlinks for sys.path[0], and under `bazel test` the script is a runfiles symlink
  # into the source tree, whose tal_tf would shadow the one Bazel built.
  train = "-m", "train_main"
  return {
      "train_bad_number": (
          [*train, f"--pipeline_config={configs['bad_lr']}", f"--model_dir={work}/m"], 2,
          [f"{configs['bad_lr']}: field train_config.optimizer.learning_rate.constant."
           "learning_rate: must be > 0, got -0.1"]),
      "train_data_mismatch": (
          [*train, f"--pipeline_config={configs['bad_dim']}", f"--model_dir={work}/m2"], 2,
          [f"{records}: stream 'rgb' has dim 3 in the records (video 'v1'), but "
           "train_input_reader.streams[0].dim is 5"]),
      "train_missing_flag": (
          [*train, f"--model_dir={work}/m"], 2, ["--pipeline_config", "must have a value"]),
      "train_unknown_flag": (
          [*train, "--pipeline_config=x", "--model_dir=y", "--num_train_step=3"], 2,
          ["num_train_step"]),
      "train_zero_steps_flag": (
          [*train, "--pipeline_config=x", "--model_dir=y", "--num_train_steps=0"], 2,
          ["--num_train_steps=0", "not a positive integer"]),
      "infer_nan_flag": (
          py_m("tal_tf.inference.infer_main") + [
              f"--saved_model_dir={work}", "--window_overlap=nan", f"--output={work}/o.json"],
          2, ["flag --window_overlap: must be a finite number, got nan"]),
      "export": (
          [os.path.join(REPO, "export", "export_saved_model.py"),
           f"--pipeline_config={configs['good']}", f"--trained_checkpoint_dir={work}",
           f"--output_directory={work}/serving"], 2, [f"no checkpoint in directory '{work}'"]),
      "infer": (
          py_m("tal_tf.inference.infer_main") + [
              f"--saved_model_dir={work}/none", f"--features=rgb:{work}", "--feature_fps=1",
              f"--output={work}/o.json"], 2, [f"--saved_model_dir '{work}/none'"]),
      "evaluate": (
          py_m("tal_tf.evaluation.evaluate_main") + [
              f"--annotations={work}/annotations.json", f"--results={work}/results.json"], 2,
          [f"{work}/annotations.json"]),
      "create_tfrecord": (
          py_m("tal_tf.dataset_tools.create_tfrecord") + [
              f"--annotations={work}/annotations.json", f"--label_map={label_map}",
              f"--output={work}/rec", f"--features=rgb:{work}/nofeatures", "--feature_fps=1"],
          2, [f"'{work}/nofeatures'"]),
      "create_frame_records": (
          py_m("tal_tf.dataset_tools.create_frame_records") + [
              f"--videos={work}/novideos", f"--annotations={work}/none.json",
              f"--label_map={label_map}", f"--output={work}/frames"], 2,
          [f"'{work}/none.json' does not exist"]),
      "extract_features": (
          py_m("tal_tf.dataset_tools.extract_features") + [
              f"--videos={work}/novideos", f"--output={work}/feats", "--random_init"], 2,
          [f"'{work}/novideos' is neither a video file nor a directory"]),
      "synthetic_thumos": (
          py_m("tal_tf.dataset_tools.synthetic_thumos") + [
              f"--output_dir={work}/synth", "--dims=rgb:abc"], 2, ["'rgb:abc'"]),
      "serving_client": (
          [os.path.join(REPO, "export", "serving_client.py"), "--rest_url=http://127.0.0.1:9",
           f"--features=rgb:{work}", "--feature_fps=1", f"--output={work}/o.json"], 2,
          ["http://127.0.0.1:9/v1/models/tal_net", "cannot reach the server"]),
  }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs every case at once (their TensorFlow imports overlap); {name: CompletedProcess}."""
  work = str(tmp_path_factory.mktemp("cli"))
  cases = _cases(work)
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop(cli.TRACEBACK_ENV, None)
  procs = {name: subprocess.Popen([sys.executable] + argv, cwd=work, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (argv, _, _) in cases.items()}
  results = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    results[name] = (proc.returncode, stdout, stderr)
  return cases, results


CASE_NAMES = [
    "train_bad_number", "train_data_mismatch", "train_missing_flag", "train_unknown_flag",
    "train_zero_steps_flag", "infer_nan_flag", "export", "infer", "evaluate",
    "create_tfrecord", "create_frame_records", "extract_features", "synthetic_thumos",
    "serving_client"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cli_error_is_one_line(runs, name):
  cases, results = runs
  _, code, expected = cases[name]
  returncode, _, stderr = results[name]
  lines = stderr.splitlines()
  assert returncode == code, stderr[-3000:]
  assert len(lines) == 1, stderr[-3000:]
  assert "Traceback" not in stderr
  argv = cases[name][0]
  program = argv[1].split(".")[-1] if argv[0] == "-m" else \
      os.path.basename(argv[0])[:-len(".py")]
  assert lines[0].startswith(f"{program}: error: "), lines[0]
  for text in expected:
    assert text in lines[0], lines[0]


def test_every_cli_is_covered():
  scripts = {"train_main.py", "export_saved_model.py", "infer_main.py", "evaluate_main.py",
             "create_tfrecord.py", "create_frame_records.py", "extract_features.py",
             "synthetic_thumos.py", "serving_client.py"}
  covered = set()
  # Every module under tal_tf/ or export/ that runs absl goes through tal_tf.utils.cli.
  runners = []
  for root in (os.path.join(REPO, "tal_tf"), os.path.join(REPO, "export"),
               os.path.join(REPO, "train_main.py")):
    paths = [root] if root.endswith(".py") else [
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py")]
    for path in paths:
      with open(path, encoding="utf-8") as f:
        text = f.read()
      if "app.run(" in text and not path.endswith(os.path.join("utils", "cli.py")):
        runners.append(os.path.relpath(path, REPO))
      if "cli.run(main" in text:
        covered.add(os.path.basename(path))
  assert not runners, f"CLIs calling absl app.run directly (use tal_tf.utils.cli.run): {runners}"
  assert scripts <= covered, scripts - covered


def test_the_case_list_is_complete(tmp_path):
  assert sorted(_cases(str(tmp_path))) == sorted(CASE_NAMES)


def test_one_line_of_a_tensorflow_op_error():
  error = tf.errors.InvalidArgumentError(
      None, None, "{{function_node __wrapped__IteratorGetNext}} assertion failed: [Corrupt or "
      "truncated TFRecord file] [/d/x.tfrecord]\n\t [[{{node Assert}}]] [Op:IteratorGetNext]")
  assert cli.one_line(error) == ("assertion failed: [Corrupt or truncated TFRecord file] "
                                 "[/d/x.tfrecord]")
  assert cli.one_line(ValueError("a\n  b")) == "a b"
  assert cli.one_line(FileNotFoundError(2, "No such file", "/x")) == \
      "/x: no such file or directory"


def test_guard_reports_library_errors_and_keeps_bugs(capsys, monkeypatch):
  def raising(error):
    def main(argv):
      del argv
      raise error
    return cli.guard(main)

  assert raising(ValueError("cfg.config: field x: bad"))([]) == cli.EXIT_ERROR
  assert capsys.readouterr().err.endswith("error: cfg.config: field x: bad\n")
  assert raising(OSError(28, "No space left on device"))([]) == cli.EXIT_ERROR
  assert "No space left on device" in capsys.readouterr().err
  from tal_tf.training import checkpoint_util  # pylint: disable=g-import-not-at-top
  assert raising(checkpoint_util.ModelDirInUseError("m is in use by pid 1"))([]) == \
      cli.EXIT_ERROR
  assert capsys.readouterr().err.endswith("error: m is in use by pid 1\n")
  assert raising(KeyboardInterrupt())([]) == cli.EXIT_INTERRUPTED
  with pytest.raises(KeyError):  # A bug keeps its traceback.
    raising(KeyError("k"))([])
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  with pytest.raises(ValueError):
    raising(ValueError("shown with its traceback"))([])


def test_matplotlib_config_dir_only_when_home_cannot_hold_it(tmp_path):
  assert cli.matplotlib_config_dir({"HOME": str(tmp_path)}) is None          # creatable
  assert cli.matplotlib_config_dir({"HOME": "/dev/null/x", "MPLCONFIGDIR": "/a"}) is None
  assert cli.matplotlib_config_dir({"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/dev/null/x"}) \
      is None
  chosen = cli.matplotlib_config_dir({"HOME": "/dev/null/x"})                # not a folder
  assert chosen is not None and chosen.startswith(tempfile.gettempdir())
  assert str(os.getuid()) in os.path.basename(chosen)


def test_cli_with_an_unusable_home_keeps_stderr_quiet(tmp_path):
  # A CLI importing matplotlib (as the evaluator's plots and Model Garden do) under a home
  # that is not a folder: no multi-line matplotlib warning, a stable per-user folder instead.
  script = tmp_path / "tool.py"
  script.write_text(
      "import os\n"
      "from tal_tf.utils import cli\n"
      "def main(argv):\n"
      "  import matplotlib.font_manager  # noqa\n"
      "  print(os.environ['MPLCONFIGDIR'])\n"
      "  return 0\n"
      "cli.run(main)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
  env.update(HOME="/dev/null/x", PYTHONPATH=REPO)
  done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  assert "matplotlib" not in done.stderr.lower(), done.stderr
  assert done.stdout.strip() == cli.matplotlib_config_dir({"HOME": "/dev/null/x"})
