"""The soft-skeleton clDice term of the fine-tuning loss (Shit et al. 2021)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from cm_unet_keras import CMUNet
from cm_unet_keras.cli import build_parser
from cm_unet_keras.config import FinetuneConfig
from cm_unet_keras.data.layouts import index_pairs
from cm_unet_keras.training.finetune import finetune
from cm_unet_keras.training.losses import DiceBCELoss, soft_cldice, soft_skeleton


def _bar(shape=(1, 32, 48, 1), rows=(11, 20), cols=(6, 42)):
    mask = np.zeros(shape, "float32")
    mask[0, rows[0]:rows[1], cols[0]:cols[1], 0] = 1.0
    return mask


def test_soft_skeleton_of_a_thick_bar_is_thin_and_centred():
    # A bar 9 pixels tall (rows 11-19, centre row 15) and 36 long. Its
    # centreline shortened by the half-width at each end is row 15,
    # cols 10-37: 28 pixels.
    skeleton = soft_skeleton(_bar()).numpy()[0, ..., 0]
    assert skeleton.min() >= 0.0 and skeleton.max() <= 1.0 + 1e-6
    rows_with_mass = np.flatnonzero(skeleton.sum(axis=1) > 1e-3)
    np.testing.assert_array_equal(rows_with_mass, [15])
    assert skeleton.sum() == pytest.approx(28.0, abs=1e-4)
    assert skeleton[15, 10:38].min() == pytest.approx(1.0)


def test_soft_cldice_of_identical_masks_is_one_and_of_disjoint_ones_near_zero():
    bar = _bar()
    assert float(soft_cldice(bar, bar)[0]) == pytest.approx(1.0, abs=1e-6)
    # The same bar moved below itself: no overlap. Only the 1-pixel smoothing
    # is left: (0 + 1) / (28 + 1) for Tprec and Tsens alike.
    moved = np.roll(bar, 10, axis=1)
    assert float(soft_cldice(bar, moved)[0]) == pytest.approx(1 / 29, abs=1e-5)
    # A thin line along the bar's centre is topologically right: near 1,
    # although its pixel Dice is 2 * 36 / (36 + 324) = 0.2.
    line = np.zeros_like(bar)
    line[0, 15, 6:42, 0] = 1.0
    assert float(soft_cldice(bar, line)[0]) > 0.95


def test_weight_zero_is_exactly_dice_plus_bce():
    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 16, 16, 1)) > 0.7).astype("float32")
    y_pred = rng.uniform(0.05, 0.95, (2, 16, 16, 1)).astype("float32")
    p = y_pred.astype("float64")
    dice = 1 - (2 * (y_true * p).sum(axis=(1, 2, 3)) + 1) / (y_true.sum(axis=(1, 2, 3)) + p.sum(axis=(1, 2, 3)) + 1)
    bce = -(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)).mean(axis=(1, 2, 3))
    expected = np.mean(0.5 * dice + 0.5 * bce)
    assert float(DiceBCELoss(0.5, cldice_weight=0.0)(y_true, y_pred)) == pytest.approx(expected, abs=1e-6)
    assert float(DiceBCELoss(0.5, 0.0)(y_true, y_pred)) == float(DiceBCELoss(0.5)(y_true, y_pred))
    # A weight w adds w * (1 - soft clDice), per image, then the batch mean.
    term = np.mean(1.0 - soft_cldice(y_true, np.clip(y_pred, 1e-7, 1 - 1e-7)).numpy())
    with_term = float(DiceBCELoss(0.5, cldice_weight=0.4)(y_true, y_pred))
    assert with_term == pytest.approx(expected + 0.4 * term, abs=1e-5)
    with pytest.raises(ValueError, match="cldice_weight"):
        DiceBCELoss(0.5, cldice_weight=-0.1)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_cldice_term_is_finite_with_a_gradient_under_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = CMUNet(base_filters=4, depth=2)
        images = np.random.default_rng(0).normal(size=(2, 64, 64, 1)).astype("float32")
        masks = np.concatenate([_bar((1, 64, 64, 1), (20, 29), (5, 60))] * 2)
        with tf.GradientTape() as tape:
            loss = DiceBCELoss(0.5, cldice_weight=1.0)(masks, model(images))
        gradients = tape.gradient(loss, model.trainable_variables)
        assert loss.dtype == tf.float32 and np.isfinite(float(loss))
        assert all(np.all(np.isfinite(g.numpy())) for g in gradients if g is not None)
        assert any(np.any(g.numpy() != 0) for g in gradients if g is not None)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_loss_config_round_trips_and_survives_a_saved_model(tmp_path):
    loss = DiceBCELoss(0.3, cldice_weight=0.5)
    restored = DiceBCELoss.from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()
    model = CMUNet(base_filters=4, depth=2)
    model.compile(optimizer="adam", loss=loss)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded.loss, DiceBCELoss) and loaded.loss.cldice_weight == 0.5
    assert loaded.loss.dice_weight == pytest.approx(0.3)


def test_cli_flag_sets_the_field():
    args = build_parser().parse_args(["finetune", "--pairs", "x", "--out", "y", "--cldice-weight", "0.5"])
    assert args.cldice_weight == 0.5
    assert FinetuneConfig().cldice_weight == 0.0


def test_a_real_finetune_with_cldice_runs_and_lowers_its_loss(shared_data, tmp_path):
    # One real CIMAT pair, a tiny U-Net, 64 px patches, 5 x 8 steps.
    records = [r for r in index_pairs(shared_data / "xca_vessels" / "train", mask_suffix="_gt") if r.name == "1"]
    assert len(records) == 1, "expected xca_vessels/train/1.png and 1_gt.png in ../shared/data"
    config = FinetuneConfig(base_filters=8, depth=2, epochs=5, steps_per_epoch=8, batch_size=4, patch_size=64,
                            lr=5e-3, val_fraction=0.0, seed=0, precision="float32", cldice_weight=0.5)
    with pytest.raises(ValueError, match="cldice_weight"):
        finetune(FinetuneConfig(cldice_weight=-1.0), records, tmp_path / "refused", verbose=0)
    assert not (tmp_path / "refused").exists()
    finetune(config, records, tmp_path / "run", verbose=0)
    losses = [row["loss"] for row in json.loads((tmp_path / "run" / "state.json").read_text())["history"]]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.05, losses
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["cldice_weight"] == 0.5
    model = keras.models.load_model(tmp_path / "run" / "checkpoints" / "last.keras", safe_mode=True)
    assert model.loss.cldice_weight == 0.5


def test_the_curves_name_the_loss_a_run_trains_with():
    import dataclasses

    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.finetune import curves_for

    plain = curves_for(FinetuneConfig())
    assert plain[0][1]["ylabel"] == "training loss (Dice + BCE)"
    with_cldice = curves_for(dataclasses.replace(FinetuneConfig(), cldice_weight=0.3))
    assert with_cldice[0][1]["ylabel"] == "training loss (Dice + BCE + 0.3 x (1 - clDice))"
    assert with_cldice[1:] == plain[1:] and plain[0][1]["ylabel"] == "training loss (Dice + BCE)"
