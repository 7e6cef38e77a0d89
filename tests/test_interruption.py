"""SIGKILL in the middle of training, then the same command again."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from cm_unet_keras.training import finetune  # noqa: F401  (registers the schedule and loss of checkpoints)

# Long enough that a fast machine (a 6-step epoch took < 0.2 s on an AVX512_BF16
# CPU) is still mid-run when it is killed after its second epoch.
SETTINGS = dict(base_filters=4, depth=2, epochs=8, steps_per_epoch=12, batch_size=2, patch_size=32, seed=1)


def _command(data, out):
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in SETTINGS.items()]
    return [
        sys.executable, "-m", "cm_unet_keras.cli", "finetune",
        "--images", str(data / "images"), "--masks", str(data / "masks"),
        "--out", str(out), "--precision", "float32", "--deterministic", "--verbose", "0", *flags,
    ]


def _epochs_done(run):
    try:
        return json.loads((run / "state.json").read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def _start(command, run):
    """Start `command` (which writes to the folder `run`); its stderr goes to
    `run`.stderr, a file, so that a full pipe never stalls it."""
    with open(f"{run}.stderr", "w") as stderr:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)


def _finish(process, run):
    """Wait for the uninterrupted run in `run`; it must succeed."""
    process.wait(timeout=300)
    assert process.returncode == 0, Path(f"{run}.stderr").read_text()[-3000:]


def _kill_after_two_epochs(process, run, settle):
    """SIGKILL `process` `settle` seconds after `run` has saved its second epoch."""
    deadline = time.monotonic() + 240
    while _epochs_done(run) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    assert process.poll() is None, "finished before it could be killed: make the run longer"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_finetune_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, synthetic_dataset):
    data = synthetic_dataset(6, size=64, seed=4).folder
    # The reference runs in its own process too (op determinism, once on,
    # stays on for the whole process), at the same time as the killed run:
    # the two share nothing but the read-only data.
    whole = _start(_command(data, tmp_path / "reference"), tmp_path / "reference")
    run = tmp_path / "killed"
    _kill_after_two_epochs(_start(_command(data, run), run), run, settle=0.05)  # into the next epoch
    killed_at = _epochs_done(run)
    assert 2 <= killed_at < SETTINGS["epochs"]
    _finish(whole, tmp_path / "reference")
    reference = keras.models.load_model(tmp_path / "reference" / "checkpoints" / "last.keras", safe_mode=True)

    finished = subprocess.run(_command(data, run), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming after epoch" in finished.stdout  # not a restart from scratch
    state = json.loads((run / "state.json").read_text())
    epochs = [row["epoch"] for row in state["history"]]
    assert epochs == list(range(1, SETTINGS["epochs"] + 1))  # nothing repeated, nothing lost
    # Same data, same steps, same schedule: every epoch's loss equals the
    # uninterrupted run's. A repeated or skipped epoch moves it by 1e-2.
    expected = json.loads((tmp_path / "reference" / "state.json").read_text())["history"]
    np.testing.assert_allclose([r["loss"] for r in state["history"]], [r["loss"] for r in expected], rtol=1e-4)
    # The resumed process reorders a few float sums (oneDNN picks its kernels
    # per process), and 72 more steps amplify it: measured 2e-4 to 1.2e-3 on
    # the weights (BatchNorm variances) on an AVX512 CPU, and 8.4e-3 on one
    # of them after issue 12 (field of view, selection and optimizer changes;
    # the epoch losses still agree to 1e-4), while two uninterrupted runs are
    # bit-identical. The loss check above is the
    # sharp one; this one catches a checkpoint that was not restored at all
    # (weights off by 0.1 to 1).
    resumed = keras.models.load_model(run / "checkpoints" / "last.keras", safe_mode=True)
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)
    assert not [p for p in run.rglob(".*") if p.is_file()], "temporary files left behind"


PRETRAIN = dict(base_filters=4, depth=2, epochs=4, steps_per_epoch=4, batch_size=2, image_size=32, working_size=64,
                warmup_epochs=0, seed=1)


def _pretrain_command(images, out):
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in PRETRAIN.items()]
    return [
        sys.executable, "-m", "cm_unet_keras.cli", "pretrain", "--images", str(images),
        "--out", str(out), "--precision", "float32", "--verbose", "0", *flags,
    ]


def _pretrained_weights(run):
    from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer

    pretrainer = ContrastiveMaskedPretrainer(base_filters=4, depth=2)
    pretrainer.load_weights(run / "pretrained.weights.h5")
    return pretrainer.get_weights()


def test_pretrain_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, synthetic_dataset):
    images = synthetic_dataset(6, size=64, seed=5).images
    whole = _start(_pretrain_command(images, tmp_path / "reference"), tmp_path / "reference")  # as above
    run = tmp_path / "killed"
    _kill_after_two_epochs(_start(_pretrain_command(images, run), run), run, settle=0.2)
    assert 2 <= _epochs_done(run) < PRETRAIN["epochs"]
    _finish(whole, tmp_path / "reference")

    finished = subprocess.run(_pretrain_command(images, run), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3, 4]
    for a, b in zip(_pretrained_weights(tmp_path / "reference"), _pretrained_weights(run)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_finetune_state_saved_ahead_of_its_checkpoint_is_rolled_back():
    """A kill after `state.json` is written for an epoch but before that
    epoch's checkpoint: resuming redoes the epoch (never trains it twice)."""
    from types import SimpleNamespace

    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.finetune import FinetuneRun

    run = FinetuneRun(FinetuneConfig(steps_per_epoch=12), "unused", log=lambda *_: None)
    run.state = {"epochs_done": 3, "best_val_dice": 0.5, "best_epoch": 3,
                 "history": [{"epoch": e} for e in (1, 2, 3)]}
    run.model = SimpleNamespace(optimizer=SimpleNamespace(iterations=keras.Variable(24, dtype="int64")))
    run.reconcile(run.log)
    assert run.state["epochs_done"] == 2 and [r["epoch"] for r in run.state["history"]] == [1, 2]
    run.model.optimizer.iterations.assign(24)
    run.state["epochs_done"] = 2
    run.reconcile(run.log)  # consistent: untouched
    assert run.state["epochs_done"] == 2 and len(run.state["history"]) == 2
