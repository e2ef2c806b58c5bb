"""Analytic FLOP counts of TAL-Net's layers (feature reducer, SPN, SoI classifier head).

Convention: a multiply-add is 2 FLOPs (as TensorFlow's profiler counts MatMul / Conv);
biases and activations are not counted; max pooling counts (kernel - 1) comparisons per
output value. Convolutions are 'same', stride 1, so every layer runs on all T steps. Counts
follow the same tower plans the layers are built from (`tower_plan`), so they track any
change in the receptive-field design.
Run from the repository root: `python -m bench.bench_flops`.
"""
from tal_tf.models.segment_proposal_network import DEFAULT_SCALES
from tal_tf.models.segment_proposal_network import tower_plan


def conv1d_flops(num_steps, in_channels, out_channels, kernel_size=1):
  """FLOPs of a stride-1 'same' Conv1D (or a dense layer when kernel_size=1) over num_steps rows."""
  return 2 * num_steps * kernel_size * in_channels * out_channels


def maxpool1d_flops(num_steps, channels, pool_size):
  """Comparisons of a stride-1 'same' MaxPool1D: (pool_size - 1) per output value."""
  return num_steps * channels * (pool_size - 1)


def feature_reducer_flops(num_steps, input_dim, filters=256):
  """FLOPs of FeatureReducer on [T, input_dim] -> [T, filters]."""
  return conv1d_flops(num_steps, input_dim, filters)


def spn_flops(num_steps, input_dim, scales=DEFAULT_SCALES, variant="multi_dilated",
              use_context=True, filters=256, num_classes_out=2, code_size=2, rounding="exact"):
  """FLOPs of one SegmentProposalNetwork on features [T, input_dim] (per video)."""
  num_scales = len(scales)
  plans = [tower_plan(s, use_context, variant, rounding) for s in scales]
  multi = variant.startswith("multi")
  towers = plans if multi else plans[:1]
  head_channels = (num_classes_out + code_size) * (1 if multi else num_scales)
  total = 0
  for plan in towers:
    channels = input_dim
    total += maxpool1d_flops(num_steps, channels, plan.pool_size)
    for kernel in plan.kernel_sizes:
      total += conv1d_flops(num_steps, channels, filters, kernel)
      channels = filters
    total += conv1d_flops(num_steps, channels, head_channels)
  return total


def classifier_flops(num_proposals, num_bins, input_dim, num_classes, reduce_filters=256,
                     fc_units=256, code_size=2):
  """FLOPs of SoiClassifierHead on pooled features [P, bins, input_dim]."""
  total = 0
  channels = input_dim
  if reduce_filters is not None:
    total += conv1d_flops(num_proposals * num_bins, input_dim, reduce_filters)
    channels = reduce_filters
  total += conv1d_flops(num_proposals, num_bins * channels, fc_units)
  total += conv1d_flops(num_proposals, fc_units, num_classes + 1 + num_classes * code_size)
  return total


def tal_net_flops(num_steps, stream_dims=(1024, 1024), num_proposals=300, num_bins=7,
                  num_classes=20, reduce_dim=256, spn_kwargs=None, classifier_kwargs=None):
  """FLOPs of a late-fusion TAL-Net per video: per stream reducer + SPN + classifier head.

  num_bins is the SoI pooling output size (a config of the SoI pooling op; 7 is the size the
  paper's Fig. 5 illustrates). SoI pooling and NMS are not counted.
  """
  spn_kwargs = dict(spn_kwargs or {})
  classifier_kwargs = dict(classifier_kwargs or {})
  total = 0
  for dim in stream_dims:
    spn_input = dim
    if reduce_dim is not None:
      total += feature_reducer_flops(num_steps, dim, reduce_dim)
      spn_input = reduce_dim
    total += spn_flops(num_steps, spn_input, **spn_kwargs)
    # SoI pooling reads the stream itself; the classifier head has its own 1x1 reduction
    # ("before the Segment Proposal Network and after the SoI pooling layer").
    total += classifier_flops(num_proposals, num_bins, dim, num_classes,
                              **classifier_kwargs)
  return total


if __name__ == "__main__":
  for steps in (128, 512, 2048):
    print(f"T={steps}: TAL-Net {tal_net_flops(steps) / 1e9:.3f} GFLOPs per video")
