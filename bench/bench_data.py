"""Benchmark of the data layer on THUMOS14-sized videos with two 1024-d streams.

Reports conversion throughput (videos/s, feature steps/s) for the .npy-directory and HDF5
paths, and input-pipeline throughput (videos/s, feature steps/s) for evaluation (whole
videos) and training (random windows). Videos take their durations and segments from the
shipped THUMOS14 annotations (synthetic features at --feature_fps steps/s, so a few hundred
steps per video).

Run: python bench/bench_data.py [--num_videos=100] [--feature_fps=2.0] [--dim=1024]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _convert(source, paths, work, name, feature_fps):
  from tal_tf.dataset_tools import create_tfrecord
  start = time.perf_counter()
  summary = create_tfrecord.convert_dataset(
      paths["annotations"], os.path.join(work, "records", name), paths["label_map"], source,
      num_shards=4, feature_fps=feature_fps, progress_stream=None)
  seconds = time.perf_counter() - start
  return summary, seconds


def _iterate(dataset, max_batches=None):
  """Iterates a dataset; returns (videos, valid steps, seconds) excluding the first batch."""
  from tal_tf.core.standard_fields import InputFields as F
  iterator = iter(dataset)
  next(iterator)  # warm-up: tracing and first reads
  videos = steps = batches = 0
  start = time.perf_counter()
  for batch in iterator:
    videos += int(batch[F.num_steps].shape[0])
    steps += int(np.sum(batch[F.num_steps].numpy()))
    batches += 1
    if max_batches is not None and batches >= max_batches:
      break
  return videos, steps, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_videos", type=int, default=100,
                      help="videos (half from THUMOS14 validation, half from test)")
  parser.add_argument("--feature_fps", type=float, default=2.0)
  parser.add_argument("--dim", type=int, default=1024, help="dim of each of the two streams")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--max_steps", type=int, default=512, help="training window")
  parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
  args = parser.parse_args()

  from tal_tf.dataset_tools import feature_readers
  from tal_tf.dataset_tools import synthetic_thumos

  work = tempfile.mkdtemp(prefix="bench_data_")
  try:
    dims = {"rgb": args.dim, "flow": args.dim}
    t0 = time.perf_counter()
    paths = synthetic_thumos.generate_dataset(
        work, num_videos=max(1, args.num_videos // 2), stream_dims=dims,
        feature_fps=args.feature_fps, seed=0)
    n = len(paths["video_ids"])
    steps = [np.load(os.path.join(paths["features"]["rgb"], v + ".npy"), mmap_mode="r").shape[0]
             for v in paths["video_ids"]]
    print(f"Generated {n} videos ({sum(steps)} steps, mean {np.mean(steps):.0f}, "
          f"max {max(steps)}; two {args.dim}-d streams) in {time.perf_counter() - t0:.1f} s")

    import tensorflow as tf  # noqa: F401  (import cost kept out of the timings)
    source = feature_readers.NpyDirSource(paths["features"], dims)
    summary, sec = _convert(source, paths, work, "npy", args.feature_fps)
    assert summary.num_written == n, summary.format()
    mb = sum(os.path.getsize(p) for p in summary.shards) / 2 ** 20
    print(f"Conversion (.npy dirs): {n / sec:.1f} videos/s, {sum(steps) / sec:,.0f} steps/s, "
          f"{mb / sec:.0f} MB/s of TFRecord ({sec:.2f} s)")

    import h5py
    h5_path = os.path.join(work, "features.h5")
    with h5py.File(h5_path, "w") as f:
      for v in paths["video_ids"]:
        f.create_dataset(v, data=np.concatenate(
            [np.load(os.path.join(paths["features"][s], v + ".npy")) for s in dims], axis=1))
    summary_h5, sec = _convert(feature_readers.Hdf5Source(h5_path, dims), paths, work, "h5",
                               args.feature_fps)
    assert summary_h5.num_written == n, summary_h5.format()
    print(f"Conversion (HDF5 via h5py): {n / sec:.1f} videos/s, "
          f"{sum(steps) / sec:,.0f} steps/s ({sec:.2f} s)")

    from tal_tf.data import input_pipeline
    pattern = os.path.join(work, "records", "npy-*.tfrecord")
    eval_ds = input_pipeline.build_dataset(pattern, dims, num_classes=20,
                                           batch_size=args.batch_size, is_training=False)
    videos, valid, sec = _iterate(eval_ds.repeat(3))  # 3 passes for a steadier figure
    print(f"Input pipeline, eval (whole videos, batch {args.batch_size}): "
          f"{videos / sec:.1f} videos/s, {valid / sec:,.0f} steps/s "
          f"({videos} videos over 3 passes after warm-up)")
    train_ds = input_pipeline.build_dataset(pattern, dims, num_classes=20,
                                            batch_size=args.batch_size, is_training=True,
                                            max_steps=args.max_steps, seed=0)
    num_batches = max(10, 5 * n // args.batch_size)
    videos, valid, sec = _iterate(train_ds, num_batches)
    print(f"Input pipeline, train (window {args.max_steps}, batch {args.batch_size}, "
          f"shuffle + crop): {videos / sec:.1f} videos/s, {valid / sec:,.0f} steps/s "
          f"({num_batches} batches)")
  finally:
    if args.keep:
      print(f"Kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
