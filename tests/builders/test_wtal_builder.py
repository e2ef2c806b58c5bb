"""WTAL configs: the shipped configs and every ablation override build the intended model."""
import glob
import os

import pytest

from tal_tf.builders import model_builder
from tal_tf.meta_architectures import wtal_meta_arch
from tal_tf.utils import config_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASES = ("wtal_embedded.config", "wtal_thumos14_i3d.config")
ABLATIONS = sorted(glob.glob(os.path.join(REPO, "configs", "wtal_ablations", "*.config")))

# What each ablation changes, as (attribute of WtalMetaArch, value).
EXPECTED = {
    "tab3_no_metric_loss": ("_metric_loss", "none"),
    "tab3_contrastive": ("_metric_loss", "contrastive"),
    "tab4_no_blocks": ("_block_size", 0),
    "tab5_no_clip": ("network.kappa", None),
    "fig2_bce": ("_classification_loss", "bce"),
    "fig2_softmax_mil": ("_classification_loss", "softmax_mil"),
    "fig3_cosine": ("_distance", "cosine"),
    "fig3_euclidean": ("_distance", "euclidean"),
    "fig3_learned": ("_distance", "learned"),
}


def _attribute(model, name):
  value = model
  for part in name.split("."):
    value = getattr(value, part)
  return value


def test_paper_defaults():
  for base in BASES:
    config = config_util.load_pipeline_config(os.path.join(REPO, "configs", base))
    model = model_builder.build(config.model)
    assert isinstance(model, wtal_meta_arch.WtalMetaArch)
    assert (model._block_size, model._top_k, model.network.kappa) == (60, 10, 4.0)
    assert (model._metric_loss, model._distance, model._margin) == (
        "triplet", "class_specific", 3.0)
    assert model._classification_loss == "balanced_bce"
    assert config.train_input_reader.batch_size == 20
    assert config.train_input_reader.max_steps == 300
  thumos = config_util.load_pipeline_config(os.path.join(REPO, "configs", BASES[1]))
  assert thumos.train_config.optimizer.learning_rate.constant.learning_rate == pytest.approx(
      1e-4)


@pytest.mark.parametrize("path", ABLATIONS, ids=os.path.basename)
def test_ablation_override_builds_the_variant(path):
  assert len(ABLATIONS) == 23
  name = os.path.basename(path)[:-len(".config")]
  with open(path) as f:
    override = f.read()
  for base in BASES:
    config = config_util.load_pipeline_config(os.path.join(REPO, "configs", base), override)
    model = model_builder.build(config.model)
    if name in EXPECTED:
      attribute, value = EXPECTED[name]
      assert _attribute(model, attribute) == value
    elif name.startswith("tab5_kappa_"):
      assert model.network.kappa == float(name.rsplit("_", 1)[1])
    elif name.startswith("fig4a_k_"):
      assert (model._block_size, model._top_k) == (60, int(name.rsplit("_", 1)[1]))
    else:
      assert name.startswith("fig4b_block_")
      block = int(name.rsplit("_", 1)[1])
      assert (model._block_size, model._top_k) == (block, max(1, round(0.06 * block)))
