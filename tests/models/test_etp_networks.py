"""ETP networks: non-local block vs numpy, masking of the actionness head and the BiGRU."""
import numpy as np
import tensorflow as tf

from tal_tf.models import etp_networks


def test_non_local_block_matches_numpy():
  tf.random.set_seed(0)
  block = etp_networks.NonLocalBlock(inner_units=3)
  x = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
  out = block(x).numpy()
  np.testing.assert_allclose(out, x, atol=1e-6)  # W_z starts at zero: identity
  rng = np.random.default_rng(1)
  for layer in (block.theta, block.phi, block.g, block.w_z):
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32)
                       for w in layer.get_weights()])
  th, ph, g = (block.theta.kernel.numpy(), block.phi.kernel.numpy(), block.g.kernel.numpy())
  wz, bz = block.w_z.kernel.numpy(), block.w_z.bias.numpy()
  want = np.zeros_like(x)
  for b in range(2):
    for p in range(4):
      xs = x[b, p]  # [N=5, C=6]
      for i in range(5):
        y = sum((xs[i] @ th) @ (xs[j] @ ph) * (xs[j] @ g) for j in range(5)) / 5.0
        want[b, p, i] = xs[i] + y @ wz + bz
  np.testing.assert_allclose(block(x).numpy(), want, rtol=1e-4, atol=1e-4)


def test_actionness_head_ignores_padding():
  head = etp_networks.ActionnessHead(3, hidden_units=8, kernel_size=3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 6, 4)).astype(np.float32)
  short = head(x[:, :4], tf.constant([4])).numpy()
  padded = np.concatenate([x[:, :4], rng.normal(size=(1, 2, 4)).astype(np.float32)], 1)
  long = head(padded, tf.constant([4])).numpy()
  np.testing.assert_allclose(long[:, :4], short, atol=1e-5)


def test_refinement_network_reads_valid_units_only():
  tf.random.set_seed(0)
  rn = etp_networks.RefinementNetwork(hidden_units=5, num_layers=2)
  rng = np.random.default_rng(0)
  units = rng.normal(size=(2, 4, 3)).astype(np.float32)
  mask = np.array([[True, True, False, False], [True, True, True, True]])
  rn(units, mask)
  rn.regressor.set_weights([rng.normal(size=(10, 2)).astype(np.float32), np.zeros(2)])
  out = rn(units, mask).numpy()
  changed = units.copy()
  changed[0, 2:] = 100.0
  np.testing.assert_allclose(rn(changed, mask).numpy()[0], out[0], atol=1e-5)
  assert out.shape == (2, 2) and not np.allclose(out[0], out[1])


def test_localization_head_shapes_and_course_parts():
  head = etp_networks.LocalizationHead(4, course_parts=(1, 2, 3), hidden_units=6,
                                       use_non_local=False)
  parts = np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype(np.float32)
  logits, comp, codes = head(parts)
  assert logits.shape == (2, 3, 5) and comp.shape == (2, 3) and codes.shape == (2, 3, 2)
  # The activity classifier reads the course parts only; completeness reads all.
  changed = parts.copy()
  changed[..., 0, :] += 5.0
  logits2, comp2, _ = head(changed)
  np.testing.assert_allclose(logits2.numpy(), logits.numpy(), atol=1e-6)
  assert not np.allclose(comp2.numpy(), comp.numpy())
