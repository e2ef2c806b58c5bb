"""Video-level class scores from per-step class activations (weakly supervised localization).

The metric-learning paper (Islam et al., WACV 2020) scores a video in two steps:

  Eq. 4    P(c | B_i) = sigmoid(mean of the k largest activations s^c inside block B_i)
  Eq. 2-3  P(c | V)   = 1 - prod_i (1 - P(c | B_i))        (noisy-OR over the blocks)

with n_B = floor(n / l_w) blocks of l_w consecutive steps. Everything here works on padded
batches [B, T, C] with valid lengths num_steps [B]; padded steps never reach a result, so a
video scores the same alone and in any batch.

Block layout (the paper leaves two cases open; the choices are made here):
  * n >= l_w: blocks i = 0..n_B-1 start at i * l_w. The n - n_B * l_w steps past the last
    full block (fewer than l_w) join the LAST block, which then holds l_w..2 l_w - 1 steps.
    Dropping them would make the end of every video whose length is not a multiple of l_w
    invisible to the video score (up to 49% of a 119-step video), both in training and in
    the video score ybar^c used at inference; merging keeps n_B = floor(n / l_w) as Eq. 4
    states and every step counted.
  * 0 < n < l_w: one block of the whole video with k = min(k, n) (the paper's rule, Sec. 4.2).
  * In general a block uses k_eff = min(k, its length) activations.
  * block_size <= 0 selects "no blocks" (Tab. 4): one block per video, k_eff = min(k, n).
  * n = 0: no blocks; P(c | V) = 0.

The noisy-OR is computed in log space: log(1 - P(c | B)) = -softplus(m) for the block mean
m, so log(1 - P(c | V)) = -sum_i softplus(m_i) exactly and log P(c | V) =
log(-expm1(-sum_i softplus(m_i))); this keeps the losses finite and their gradients alive
where P(c | V) rounds to 1 in float32 (many blocks, confident classes).
"""

import tensorflow as tf

# Smallest summed block log-odds mass: keeps log P(c | V) finite (about -27.6) for a video
# without blocks (n = 0) instead of -inf.
_MIN_NEGATIVE_LOG_MASS = 1e-12


def _check_int(value, name, minimum):
  if isinstance(value, bool) or int(value) != value or int(value) < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def num_blocks(num_steps, block_size):
  """Blocks per video n_B [B] int32: max(floor(n / l_w), 1) for n > 0, 0 for n = 0 (one
  block when block_size <= 0)."""
  num_steps = tf.cast(num_steps, tf.int32)
  if int(block_size) <= 0:
    return tf.cast(num_steps > 0, tf.int32)
  blocks = tf.maximum(num_steps // int(block_size), 1)
  return tf.where(num_steps > 0, blocks, tf.zeros_like(blocks))


def _masked_top_k_mean(values, valid, k):
  """Mean of the min(k, #valid) largest valid entries along the last axis of values [..., L].

  valid [..., L] bool. Returns (means [...], counts [...] int32 of valid entries); an entry
  without valid values gets mean 0.
  """
  lowest = tf.cast(values.dtype.min, values.dtype)
  masked = tf.where(valid, values, lowest)
  static_length = values.shape[-1]
  if static_length is None:
    top_k = tf.minimum(int(k), tf.shape(values)[-1])
  else:
    top_k = min(int(k), int(static_length))
  top_values, _ = tf.math.top_k(masked, k=top_k, sorted=True)
  counts = tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1)
  k_eff = tf.minimum(counts, int(k))
  rank = tf.range(tf.shape(top_values)[-1])
  take = rank < k_eff[..., None]
  # tf.where (not a product) so the lowest-float fill never meets a 0 weight: finite
  # values and gradients.
  total = tf.reduce_sum(tf.where(take, top_values, tf.zeros_like(top_values)), axis=-1)
  means = total / tf.cast(tf.maximum(k_eff, 1), values.dtype)
  return means, counts


def block_top_k_means(activations, num_steps, block_size=60, k=10):
  """Eq. 4 before the sigmoid: per block and class the mean of the top-k activations.

  Args:
    activations: float [B, T, C] per-step class activations s (padded).
    num_steps: int [B] valid steps per video.
    block_size: l_w (Python int); <= 0 = one block per video.
    k: Python int >= 1, activations averaged per block (k_eff = min(k, block length)).
  Returns:
    (block_means [B, M, C], block_valid [B, M] bool): M = ceil(T / l_w) block slots (1 when
    block_size <= 0); slots past a video's n_B blocks are invalid and hold 0.
  """
  _check_int(block_size, "block_size", -(2 ** 31))
  _check_int(k, "k", 1)
  with tf.name_scope("block_top_k_means"):
    activations = tf.convert_to_tensor(activations)
    if activations.shape.rank is not None and activations.shape.rank != 3:
      raise ValueError(f"activations must have shape [B, T, C], got {activations.shape}")
    num_steps = tf.cast(num_steps, tf.int32)
    shape = tf.shape(activations)
    batch, length, classes = shape[0], shape[1], shape[2]
    blocks = num_blocks(num_steps, block_size)

    if int(block_size) <= 0:
      valid = tf.sequence_mask(num_steps, length)  # [B, T]
      values = tf.transpose(activations, [0, 2, 1])  # [B, C, T]
      means, _ = _masked_top_k_mean(values, valid[:, None, :], k)  # [B, C]
      return means[:, None, :], (blocks > 0)[:, None]

    size = int(block_size)
    slots = (length + size - 1) // size  # M
    # One extra block of padding so that slot j can see slot j + 1 (the remainder).
    padded_length = (slots + 1) * size
    padded = tf.pad(activations, [[0, 0], [0, padded_length - length], [0, 0]])
    grid = tf.reshape(padded, tf.stack([batch, slots + 1, size, classes]))
    # Slot j spans its own l_w steps and the next l_w: [B, M, 2 l_w, C].
    extended = tf.concat([grid[:, :-1], grid[:, 1:]], axis=2)

    slot = tf.range(slots)[:, None]  # [M, 1]
    position = tf.range(2 * size)[None, :]  # [1, 2 l_w]
    step = slot * size + position  # [M, 2 l_w]
    n = num_steps[:, None, None]
    last = (blocks - 1)[:, None, None]
    valid = ((step[None] < n) & (slot[None] <= last) &
             ((position[None] < size) | (slot[None] == last)))  # [B, M, 2 l_w]
    values = tf.transpose(extended, [0, 1, 3, 2])  # [B, M, C, 2 l_w]
    means, _ = _masked_top_k_mean(values, valid[:, :, None, :], k)  # [B, M, C]
    block_valid = tf.range(slots)[None, :] < blocks[:, None]
    means = tf.where(block_valid[..., None], means, tf.zeros_like(means))
    return means, block_valid


def noisy_or_log_probabilities(block_logits, block_valid):
  """Eq. 2-3 in log space: (log P(c|V), log(1 - P(c|V))), each [B, C].

  block_logits [B, M, C] are the block means m (P(c | B) = sigmoid(m)); block_valid [B, M].
  """
  with tf.name_scope("noisy_or"):
    block_logits = tf.convert_to_tensor(block_logits)
    valid = tf.cast(block_valid, block_logits.dtype)[..., None]
    # -log(1 - sigmoid(m)) = softplus(m).
    mass = tf.reduce_sum(tf.nn.softplus(block_logits) * valid, axis=1)  # [B, C]
    log_negative = -mass
    log_positive = tf.math.log(-tf.math.expm1(-tf.maximum(mass, _MIN_NEGATIVE_LOG_MASS)))
    return log_positive, log_negative


def video_class_log_probabilities(activations, num_steps, block_size=60, k=10):
  """Block top-k (Eq. 4) + noisy-OR (Eq. 2-3): (log P(c|V), log(1 - P(c|V))) [B, C]."""
  means, block_valid = block_top_k_means(activations, num_steps, block_size, k)
  return noisy_or_log_probabilities(means, block_valid)
