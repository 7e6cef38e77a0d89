"""Losses, schedules, splits and the fine-tuning job (tiny models, real steps)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cm_unet_keras import CMUNet
from cm_unet_keras.config import FinetuneConfig, build_config
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import AngiogramRecord
from cm_unet_keras.training.finetune import finetune, make_optimizer, split_records
from cm_unet_keras.training.losses import DiceBCELoss
from cm_unet_keras.training.schedules import WarmupCosine


def test_dice_bce_against_hand_computed_values():
    y_true = np.zeros((1, 2, 2, 1), "float32")
    y_true[0, 0, 0, 0] = 1.0
    y_pred = np.full((1, 2, 2, 1), 0.5, "float32")
    # soft Dice: 1 - (2*0.5 + 1) / (1 + 2 + 1) = 0.5 ; BCE: -log(0.5) = 0.6931
    assert float(DiceBCELoss(1.0)(y_true, y_pred)) == pytest.approx(0.5, abs=1e-6)
    assert float(DiceBCELoss(0.0)(y_true, y_pred)) == pytest.approx(np.log(2.0), abs=1e-5)
    assert float(DiceBCELoss(0.5)(y_true, y_pred)) == pytest.approx(0.25 + np.log(2.0) / 2, abs=1e-5)
    with pytest.raises(ValueError):
        DiceBCELoss(1.5)


def test_dice_term_has_a_gradient():
    y_true = tf.constant(np.eye(4, dtype="float32")[None, ..., None])
    y_pred = tf.Variable(tf.fill([1, 4, 4, 1], 0.3))
    with tf.GradientTape() as tape:
        loss = DiceBCELoss(1.0)(y_true, y_pred)
    gradient = tape.gradient(loss, y_pred).numpy()
    assert np.all(gradient[y_true.numpy() == 1] < 0)  # raise vessel probabilities


def test_all_vessel_512_mask_gives_a_finite_loss_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = CMUNet(base_filters=4, depth=2)
        prediction = model(np.random.default_rng(0).normal(size=(1, 512, 512, 1)).astype("float32"))
        loss = DiceBCELoss()(np.ones((1, 512, 512, 1), "float32"), prediction)
        assert np.isfinite(float(loss))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(peak=1.0, total_steps=110, warmup_steps=10, warmup_start_factor=0.0)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.5, abs=1e-6)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)
    assert WarmupCosine.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_split_is_disjoint_reproducible_and_limit_counts_all_labels():
    records = [AngiogramRecord(f"r{i}", f"r{i}.png", f"r{i}_gt.png") for i in range(40)]
    train, val = split_records(records, 0.25, seed=7)
    assert len(val) == 10 and len(train) == 30
    assert not {r.name for r in train} & {r.name for r in val}
    assert split_records(records, 0.25, seed=7) == (train, val)
    assert split_records(records, 0.25, seed=8)[1] != val
    # --limit N uses N labelled pairs in all, validation carved from them.
    small, small_val = split_records(records, 0.25, seed=7, limit=8)
    assert len(small) == 6 and len(small_val) == 2 and not set(small) & set(small_val)
    with pytest.raises(ValueError, match="limit"):
        split_records(records, 0.25, seed=7, limit=41)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_one_training_step_changes_weights_and_gives_a_finite_loss(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = CMUNet(base_filters=4, depth=2)
        model.compile(optimizer=make_optimizer(FinetuneConfig(lr=1e-2), 10), loss=DiceBCELoss())
        images = np.random.default_rng(0).normal(size=(2, 64, 64, 1)).astype("float32")
        masks = (images > 1.0).astype("float32")
        before = model.get_layer("encoder_level0_conv1").get_weights()[0].copy()
        history = model.fit(images, masks, epochs=1, batch_size=2, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert not np.allclose(before, model.get_layer("encoder_level0_conv1").get_weights()[0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_recipe_file_and_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 0.005\nepochs: 7\n")
    config = build_config(FinetuneConfig, recipe, epochs=9, seed=None)
    assert config.lr == 0.005 and config.epochs == 9 and config.seed == 0
    recipe.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        build_config(FinetuneConfig, recipe)


@pytest.fixture(scope="module")
def synthetic_records(synthetic_dataset):
    return synthetic_dataset(10, size=96, seed=5).records


def _tiny_config(**overrides):
    values = dict(
        base_filters=8, depth=2, epochs=6, steps_per_epoch=8, batch_size=4, patch_size=64,
        lr=5e-3, val_fraction=0.3, seed=0, precision="float32", select="best",
    )
    values.update(overrides)
    return FinetuneConfig(**values)


def test_short_finetune_raises_validation_dice(synthetic_records, tmp_path):
    result = finetune(_tiny_config(), synthetic_records, tmp_path / "run", verbose=0)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    dice = [row["val_dice"] for row in state["history"]]
    assert result["epochs_done"] == 6 and len(dice) == 6
    assert max(dice) > dice[0] + 0.1, dice
    assert result["best_val_dice"] == pytest.approx(max(dice))
    for name in ("model.keras", "history.csv", "curves.png", "split.json", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    assert any((tmp_path / "run" / "logs").rglob("*tfevents*"))
    model = keras.models.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert isinstance(model, CMUNet)


def test_resumed_run_matches_an_uninterrupted_one(synthetic_records, tmp_path):
    config = _tiny_config(epochs=3, steps_per_epoch=3)
    finetune(config, synthetic_records, tmp_path / "whole", verbose=0)

    class Interrupted(Exception):
        pass

    def interrupt_after_epoch_2(message):
        # The log line comes after the epoch's checkpoint is written.
        if message.startswith("epoch 2/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(config, synthetic_records, tmp_path / "split", log=interrupt_after_epoch_2, verbose=0)
    finetune(config, synthetic_records, tmp_path / "split", verbose=0)
    state = json.loads((tmp_path / "split" / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]  # no epoch repeated
    whole = keras.models.load_model(tmp_path / "whole" / "checkpoints" / "last.keras")
    split = keras.models.load_model(tmp_path / "split" / "checkpoints" / "last.keras")
    for a, b in zip(whole.get_weights(), split.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_init_transfers_weights_and_writes_a_report(synthetic_records, tmp_path):
    source = CMUNet(base_filters=8, depth=2)
    source.save(tmp_path / "source.keras")
    finetune(
        _tiny_config(epochs=1, steps_per_epoch=1, lr=0.0, init=str(tmp_path / "source.keras")),
        synthetic_records, tmp_path / "run", verbose=0,
    )
    report = json.loads((tmp_path / "run" / "transfer_report.json").read_text())
    assert "encoder_level0_conv1" in report["loaded"] and "decoder_level0_upconv" in report["loaded"]
    mismatched = CMUNet(base_filters=4, depth=2)
    mismatched.save(tmp_path / "narrow.keras")
    with pytest.raises(ValueError, match="shapes"):
        finetune(_tiny_config(init=str(tmp_path / "narrow.keras")), synthetic_records, tmp_path / "bad", verbose=0)


def test_layerwise_adamw_steps_slow_layers_at_their_factor(tmp_path):
    from cm_unet_keras.training.optimizers import LayerwiseAdamW

    def one_step(factor):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="body"), keras.layers.Dense(1, name="head")])
        before = [w.copy() for w in model.get_weights()]
        optimizer = LayerwiseAdamW(slow_layers=["body"], slow_factor=factor, learning_rate=1e-2, weight_decay=0.0)
        model.compile(optimizer=optimizer, loss="mse")
        data = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
        model.train_on_batch(data, data[:, :1])
        return model, [after - start for after, start in zip(model.get_weights(), before)]

    _, full = one_step(1.0)
    model, slow = one_step(0.1)
    for index in (0, 1):  # body kernel and bias: a tenth of the step
        np.testing.assert_allclose(slow[index], 0.1 * full[index], rtol=1e-4, atol=1e-9)
    for index in (2, 3):  # the head: unchanged
        np.testing.assert_allclose(slow[index], full[index], rtol=1e-5, atol=1e-9)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras", safe_mode=True).optimizer
    assert isinstance(restored, LayerwiseAdamW)
    assert restored.slow_layers == ["body"] and restored.slow_factor == 0.1


def test_pretrained_lr_factor_zero_keeps_the_transferred_layers(synthetic_records, tmp_path):
    from cm_unet_keras.inference.predict import load_model

    # The pretrained preset: encoder and decoder are transferred, the head is this run's own.
    source = load_model("cmunet_small_pretrained")
    config = _tiny_config(base_filters=16, depth=4, epochs=2, steps_per_epoch=3, weight_decay=0.0,
                          pretrained_lr_factor=0.0, init="cmunet_small_pretrained")
    result = finetune(config, synthetic_records, tmp_path / "run", verbose=0)
    trained = result["model"]
    loaded = json.loads((tmp_path / "run" / "transfer_report.json").read_text())["loaded"]
    assert "segmentation_head" not in loaded and len(loaded) > 20
    for layer in trained.layers:
        if not layer.trainable_weights:
            continue
        source_weights = source.get_layer(layer.name).trainable_weights
        moved = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(layer.trainable_weights, source_weights))
        if layer.name in loaded:
            assert moved == 0.0, layer.name
        else:
            assert moved > 0.0, layer.name


def test_freeze_batchnorm_keeps_the_starts_statistics_while_the_convolutions_train(synthetic_records, tmp_path):
    start = finetune(_tiny_config(epochs=1, steps_per_epoch=4, val_fraction=0.0), synthetic_records, tmp_path / "start",
                     verbose=0)["model"]
    init = str(tmp_path / "start" / "model.keras")

    def moved(model, kind):
        """Largest change from the start of any weight (trainable or not) of `kind` layers."""
        return max(float(np.abs(a - b).max()) for layer in model.layers if isinstance(layer, kind)
                   for a, b in zip(layer.get_weights(), start.get_layer(layer.name).get_weights()))

    for freeze in (True, False):
        config = _tiny_config(epochs=1, steps_per_epoch=4, val_fraction=0.0, init=init, freeze_batchnorm=freeze)
        trained = finetune(config, synthetic_records, tmp_path / f"freeze_{freeze}", verbose=0)["model"]
        assert moved(trained, keras.layers.Conv2D) > 1e-4
        batchnorm = moved(trained, keras.layers.BatchNormalization)  # gamma, beta, moving mean and variance
        assert (batchnorm == 0.0) if freeze else (batchnorm > 1e-3), (freeze, batchnorm)


def test_select_last_keeps_the_last_epoch_whatever_validation_says(synthetic_records, tmp_path):
    result = finetune(_tiny_config(epochs=3, steps_per_epoch=4, select="last"), synthetic_records, tmp_path / "run",
                      verbose=0)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert result["best_epoch"] == 3 and state["best_epoch"] == 3
    assert result["best_val_dice"] == pytest.approx(state["history"][-1]["val_dice"])
    kept = keras.models.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    last = keras.models.load_model(tmp_path / "run" / "checkpoints" / "last.keras", safe_mode=True)
    for a, b in zip(kept.get_weights(), last.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="select"):
        finetune(_tiny_config(select="median"), synthetic_records, tmp_path / "bad", verbose=0)


def test_recipe_values_are_coerced_to_the_field_types(tmp_path):
    from cm_unet_keras.core.errors import InvalidInputError

    recipe = tmp_path / "recipe.yaml"
    # YAML 1.1 reads 1e-3 (no dot) as a string; "8" is quoted; yes is a YAML bool.
    recipe.write_text('lr: 1e-3\nbatch_size: "8"\nepochs: 4.0\nclahe: "yes"\nlimit: null\n')
    config = build_config(FinetuneConfig, recipe)
    assert config.lr == 1e-3 and isinstance(config.lr, float)
    assert config.batch_size == 8 and isinstance(config.batch_size, int) and config.epochs == 4
    assert config.clahe is True and config.limit is None
    for bad, field in (("lr: fast\n", "lr"), ("epochs: 2.5\n", "epochs"), ("clahe: maybe\n", "clahe"),
                       ("init: [1, 2]\n", "init")):
        recipe.write_text(bad)
        with pytest.raises(InvalidInputError, match=f"recipe.yaml.*{field}: expected"):
            build_config(FinetuneConfig, recipe)


def _record_files(run_dir):
    return {name: (run_dir / name).read_bytes() for name in ("config.yaml", "split.json")}


def test_a_rerun_with_other_settings_is_refused_and_the_record_kept(synthetic_records, tmp_path):
    config = _tiny_config(epochs=1, steps_per_epoch=2)
    finetune(config, synthetic_records, tmp_path / "run", verbose=0)
    record = _record_files(tmp_path / "run")
    state = (tmp_path / "run" / "state.json").read_bytes()
    changed = _tiny_config(epochs=1, steps_per_epoch=2, lr=5e-4, init=str(tmp_path / "nowhere.keras"))
    with pytest.raises(InvalidInputError) as refused:
        finetune(changed, synthetic_records, tmp_path / "run", verbose=0)
    message = str(refused.value)
    assert "lr 0.005 -> 0.0005" in message and "init None -> " in message and "new --out" in message
    assert "\n" not in message and "epochs" not in message
    with pytest.raises(InvalidInputError, match=r"other pairs than these \(train pairs: .*missing \(synth_0000"):
        finetune(config, synthetic_records[1:], tmp_path / "run", verbose=0)
    assert _record_files(tmp_path / "run") == record
    assert (tmp_path / "run" / "state.json").read_bytes() == state


def test_more_epochs_extend_the_run_with_a_rebuilt_schedule_and_are_recorded(synthetic_records, tmp_path):
    run = tmp_path / "run"
    finetune(_tiny_config(epochs=2, steps_per_epoch=2), synthetic_records, run, verbose=0)
    record = _record_files(run)
    after_two = keras.models.load_model(run / "checkpoints" / "last.keras").get_layer("encoder_level0_conv1").get_weights()
    finetune(_tiny_config(epochs=3, steps_per_epoch=2), synthetic_records, run, verbose=0)
    state = json.loads((run / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["epochs"] == 3 and state["epochs_changed"] == [{"after_epoch": 2, "from": 2, "to": 3}]
    assert _record_files(run) == record  # config.yaml still says how the run started: epochs 2
    after_three = keras.models.load_model(run / "checkpoints" / "last.keras").get_layer("encoder_level0_conv1").get_weights()
    # The old schedule had decayed to 0 at epoch 2: epoch 3 trained only because it was rebuilt.
    assert np.abs(after_three[0] - after_two[0]).max() > 1e-4
