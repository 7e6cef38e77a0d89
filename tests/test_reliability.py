"""Untrusted model files, presets, atomic saves and NaN safety."""

import json

import keras
import numpy as np
import pytest

from cm_unet_keras import CMUNet
from cm_unet_keras.cli import main
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write, save_model_atomic
from cm_unet_keras.models.presets import file_sha256, resolve_model_path


def test_a_model_file_with_a_lambda_layer_is_refused(tmp_path, capsys):
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    code = main(["predict", "--model", str(path), "--output", str(tmp_path / "out"), str(path)])
    err = capsys.readouterr().err
    assert code != 0
    assert "lambda.keras" in err and "Lambda" in err


def _make_preset(root, name="tiny_preset"):
    folder = root / name
    folder.mkdir(parents=True)
    CMUNet(base_filters=4, depth=2).save(folder / "model.keras")
    card = {"file": "model.keras", "sha256": file_sha256(folder / "model.keras")}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_preset_is_resolved_after_its_checksum_is_verified(tmp_path):
    folder = _make_preset(tmp_path)
    assert resolve_model_path("tiny_preset", root=tmp_path) == folder / "model.keras"
    with open(folder / "model.keras", "ab") as stream:
        stream.write(b"tampered")
    with pytest.raises(InvalidInputError, match="SHA-256"):
        resolve_model_path("tiny_preset", root=tmp_path)


def test_unknown_model_name_lists_the_presets(tmp_path):
    _make_preset(tmp_path)
    with pytest.raises(InvalidInputError, match="tiny_preset"):
        resolve_model_path("no_such_model", root=tmp_path)


def test_a_failed_save_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "model.keras"
    model = CMUNet(base_filters=4, depth=2)
    save_model_atomic(model, path)
    before = path.read_bytes()

    def dies_half_way(tmp):
        with open(tmp, "wb") as stream:
            stream.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # as a kill during the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_half_way)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temporary left
    keras.models.load_model(path, safe_mode=True)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import tensorflow as tf

    from cm_unet_keras.data.layouts import index_images_masks
    from cm_unet_keras.data.synthetic import write_synthetic_dataset
    from cm_unet_keras.training import finetune as finetune_module
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.losses import DiceBCELoss

    poisoned = tf.Variable(False)

    class PoisonedAfterOneEpoch(DiceBCELoss):
        def call(self, y_true, y_pred):
            loss = super().call(y_true, y_pred)
            return loss * tf.where(poisoned, np.nan, 1.0)  # gradient-safe when not poisoned

    def poison_after_epoch_1(message):
        # Logged once the epoch's checkpoint is written.
        if message.startswith("epoch 1/"):
            poisoned.assign(True)

    monkeypatch.setattr(finetune_module, "DiceBCELoss", PoisonedAfterOneEpoch)
    write_synthetic_dataset(tmp_path / "data", 4, size=64, seed=0)
    records = index_images_masks(tmp_path / "data" / "images", tmp_path / "data" / "masks")
    config = FinetuneConfig(base_filters=4, depth=2, epochs=3, steps_per_epoch=2, batch_size=2, patch_size=32, precision="float32")
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        finetune_module.finetune(config, records, tmp_path / "run", log=poison_after_epoch_1, verbose=0)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epochs_done"] == 1
    restored = keras.models.load_model(tmp_path / "run" / "checkpoints" / "last.keras", safe_mode=True, compile=False)
    assert all(np.all(np.isfinite(w)) for w in restored.get_weights())


def test_angiograms_smaller_than_the_pretraining_views_still_train(tmp_path):
    import cv2

    from cm_unet_keras.data.layouts import index_unlabeled
    from cm_unet_keras.config import PretrainConfig
    from cm_unet_keras.training.pretrain import pretrain

    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (20, 24), dtype=np.uint8))
    config = PretrainConfig(
        base_filters=4, depth=2, image_size=32, working_size=None, batch_size=2, epochs=1, steps_per_epoch=1,
        warmup_epochs=0, precision="float32",
    )
    result = pretrain(config, index_unlabeled([tmp_path]), tmp_path / "run", verbose=0)
    assert result["epochs_done"] == 1
    assert all(np.isfinite(row["loss"]) for row in result["history"])
