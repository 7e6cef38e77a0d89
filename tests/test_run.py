"""The training spine (`training/run.py`) that fine-tuning and pretraining share."""

import keras
import numpy as np
import pytest

from cm_unet_keras.config import FinetuneConfig
from cm_unet_keras.training.optimizers import LayerwiseAdamW
from cm_unet_keras.training.run import NO_DECAY, TrainingRun, adamw


class Run(TrainingRun):
    def end_epoch(self, epoch, logs, seconds):
        self.state["history"].append({"epoch": epoch + 1, "loss": logs["loss"], "seconds": seconds})


def test_state_history_and_curves_are_written_into_the_run_folder(tmp_path):
    run = Run(FinetuneConfig(), tmp_path)
    assert run.read_state() is None and run.saved_config() == {}
    run.write_record(**{"split.json": {"train": ["a"]}})
    assert run.saved_config()["lr"] == FinetuneConfig.lr and (tmp_path / "split.json").is_file()
    for epoch, loss in enumerate((0.9, 0.5)):
        run.end_epoch(epoch, {"loss": loss}, 1.0)
    run.save_state()
    assert run.read_state()["history"][-1] == {"epoch": 2, "loss": 0.5, "seconds": 1.0}
    run.write_history()
    assert (tmp_path / "history.csv").read_text().splitlines() == ["epoch,loss,seconds", "1,0.9,1.0", "2,0.5,1.0"]
    run.write_history(["epoch", "seconds", "loss"])
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == "epoch,seconds,loss"
    run.write_curves([("loss", {"ylabel": "loss"}, {}), ("seconds", {"ylabel": "s"}, {"marker": "."})])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_non_finite_loss_stops_training_and_says_what_is_kept(tmp_path):
    run = Run(FinetuneConfig(), tmp_path)
    run.model = keras.Sequential()
    run.check_finite(0.3, 0, "nothing")
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 4; the checkpoint of epoch 3 is kept"):
        run.check_finite(float("nan"), 3, "the checkpoint of epoch 3 is kept")
    assert run.model.stop_training


def test_adamw_leaves_biases_and_batchnorm_undecayed_and_slows_transferred_layers():
    plain = adamw(1e-2, 0.5, beta_2=0.95)
    assert type(plain) is keras.optimizers.AdamW and plain.beta_2 == 0.95
    layerwise = adamw(1e-2, 0.5, slow_layers=["encoder_level0_conv1"], slow_factor=0.1)
    assert isinstance(layerwise, LayerwiseAdamW) and layerwise.slow_factor == 0.1
    for optimizer in (plain, layerwise):
        weights = [keras.Variable(np.ones(2, "float32"), name=name) for name in NO_DECAY + ["kernel"]]
        optimizer.apply([np.zeros(2, "float32")] * len(weights), weights)  # zero gradients: only the decay moves
        *undecayed, kernel = [keras.ops.convert_to_numpy(weight) for weight in weights]
        assert all((value == 1.0).all() for value in undecayed) and (kernel < 1.0).all()
