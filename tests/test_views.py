"""Pretraining views ("shift" and "crops") and the --minutes budget."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import spearmanr

from cm_unet_keras.config import PRETRAIN_RECIPES, PretrainConfig
from cm_unet_keras.data.normalize import normalize_angiogram
from cm_unet_keras.data.synthetic import generate_angiogram
from cm_unet_keras.data.views import TwoViewSampler, UnlabeledAngiograms, ViewConfig
from cm_unet_keras.training.pretrain import BUDGET_OVERHEAD, fit_to_budget


@pytest.fixture(scope="module")
def angiograms():
    """Three synthetic angiograms of different sizes, z-scored, padded into one array."""
    sizes = [(96, 128), (128, 96), (112, 112)]
    images = np.zeros((3, 128, 128, 1), np.float16)
    for index, (height, width) in enumerate(sizes):
        angiogram, _ = generate_angiogram(max(height, width), rng=index)
        angiogram = angiogram[:height, :width].astype("float32")
        images[index, :height, :width] = normalize_angiogram(angiogram[..., None]).numpy()
    return UnlabeledAngiograms(["a", "b", "c"], images, np.array(sizes, np.int32))


def views(sampler, index):
    sample = sampler.sample(tf.constant(index, tf.int64))
    return sample["online"].numpy()[..., 0], sample["target"].numpy()[..., 0]


def test_shift_views_are_one_crop_and_a_shifted_copy(angiograms):
    config = ViewConfig(image_size=64, max_shift=14, noise_fraction=0.0, views="shift")
    sampler = TwoViewSampler(angiograms, config, seed=1)
    shift = config.shift_pixels
    assert shift == 4
    for index in range(6):
        online, target = views(sampler, index)
        matches = [(dy, dx) for dy in range(shift + 1) for dx in range(shift + 1)
                   if np.allclose(online[dy:, dx:], target[: 64 - dy, : 64 - dx], atol=1e-6)]
        assert matches, f"sample {index}: the target is not a shifted copy of the online view"


def test_crop_views_overlap_stay_inside_the_image_and_are_reproducible(angiograms):
    config = ViewConfig(image_size=64, views="crops")
    sampler = TwoViewSampler(angiograms, config, seed=2, samples_per_epoch=3)
    distinct = 0
    for index in range(30):
        sample_index = tf.constant(index, tf.int64)
        image_index = sampler.image_index(sample_index)
        height, width = angiograms.sizes[int(image_index)]
        online_box, target_box = [tuple(int(v) for v in box) for box in sampler.crop_boxes(sample_index, image_index)]
        for top, left, box_height, box_width in (online_box, target_box):
            assert 0 <= top and top + box_height <= height and 0 <= left and left + box_width <= width
        top, left, box_height, box_width = online_box
        center_y = target_box[0] + target_box[2] // 2
        center_x = target_box[1] + target_box[3] // 2
        # The target crop's centre lies in the online crop unless the image
        # edge pushed the target crop back inside.
        clipped = target_box[0] in (0, height - target_box[2]) or target_box[1] in (0, width - target_box[3])
        inside = top <= center_y < top + box_height and left <= center_x < left + box_width
        assert inside or clipped
        # Overlap: the boxes always intersect.
        assert min(top + box_height, target_box[0] + target_box[2]) > max(top, target_box[0])
        assert min(left + box_width, target_box[1] + target_box[3]) > max(left, target_box[1])
        distinct += online_box != target_box
        np.testing.assert_array_equal(views(sampler, index)[1], views(sampler, index)[1])
    assert distinct >= 25, "the two crops are drawn independently"


def test_crop_view_jitter_is_monotone_and_blur_and_noise_go_to_the_target_only(angiograms):
    # Whole-image crops of the square angiogram: both views see the same pixels.
    square = UnlabeledAngiograms(["c"], angiograms.images[2:3], angiograms.sizes[2:3])
    whole = dict(image_size=64, views="crops", crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), flip=False)
    plain = TwoViewSampler(square, ViewConfig(**whole, jitter=0.0, blur_probability=0.0, noise_fraction=0.0))
    jittered = TwoViewSampler(square, ViewConfig(**whole, jitter=0.4, blur_probability=0.0, noise_fraction=0.0))
    blurred = TwoViewSampler(square, ViewConfig(**whole, jitter=0.0, blur_probability=1.0, noise_fraction=0.0))
    changed = 0
    for index in range(8):
        online, target = views(plain, index)
        np.testing.assert_allclose(online, target, atol=1e-5)  # same whole-image crop, nothing else
        online_j, target_j = views(jittered, index)
        for before, after in ((online, online_j), (target, target_j)):
            # Brightness, contrast and gamma only re-map intensities monotonically.
            assert spearmanr(before.ravel(), after.ravel()).correlation > 0.999
            changed += not np.allclose(before, after, atol=1e-3)
        online_b, target_b = views(blurred, index)
        np.testing.assert_allclose(online_b, online, atol=1e-5)
        assert np.abs(np.diff(target_b, axis=1)).mean() < np.abs(np.diff(target, axis=1)).mean()
    assert changed >= 8


def test_unknown_view_mode_is_refused():
    with pytest.raises(ValueError, match="views must be one of"):
        ViewConfig(views="rotate")


def test_a_minutes_budget_sizes_epochs_and_keeps_the_warmup_share():
    config = PretrainConfig(epochs=100, warmup_epochs=10, minutes=10.0)
    sized = fit_to_budget(config, steps_per_epoch=10, step_seconds=0.5, spent_seconds=30.0)
    expected = int((600.0 - 30.0) * (1.0 - BUDGET_OVERHEAD) / 5.0)
    assert sized.epochs == expected
    assert sized.warmup_epochs == round(0.1 * expected)
    assert (sized.minutes, sized.batch_size) == (config.minutes, config.batch_size)
    # A resumed run adds what the remaining time allows to its finished epochs.
    assert fit_to_budget(config, 10, 0.5, spent_seconds=300.0, epochs_done=40).epochs == 40 + int(300 * 0.95 / 5)
    # A budget too small for an epoch still trains one, with one warm-up epoch.
    tiny = fit_to_budget(config, steps_per_epoch=1000, step_seconds=1.0)
    assert (tiny.epochs, tiny.warmup_epochs) == (1, 1)
    # Each epoch's end (checkpoint, weights, curves) is paid from the budget too.
    short = fit_to_budget(config, steps_per_epoch=2, step_seconds=0.05, epoch_end_seconds=0.9)
    assert short.epochs == int(600.0 * (1.0 - BUDGET_OVERHEAD) / (2 * 0.05 + 0.9))


def test_history_of_a_resumed_older_run_gains_the_new_column(tmp_path):
    from types import SimpleNamespace

    from cm_unet_keras.training.run import TrainingRun

    older = {"epoch": 1, "loss": 1.0, "seconds": 2.0}
    run = SimpleNamespace(run_dir=tmp_path, state={"history": [older, {**older, "epoch": 2, "end_seconds": 0.5}]})
    TrainingRun.write_history(run)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == ["epoch,loss,seconds,end_seconds", "1,1.0,2.0,", "2,1.0,2.0,0.5"]


def test_the_cpu_recipe_is_a_valid_pretraining_config():
    config = PretrainConfig(**PRETRAIN_RECIPES["cpu"])
    config.check()
    assert config.views == "crops" and config.epochs * config.steps_per_epoch >= 5 * 1200
    assert dataclasses.replace(config, views="shift").view_config().views == "shift"


def test_pretrain_with_a_minutes_budget_records_and_keeps_its_epochs(tmp_path, shared_data):
    from cm_unet_keras.cli import main

    run_dir = tmp_path / "run"
    arguments = [
        "pretrain", "--images", str(shared_data / "arcade_stenosis" / "test" / "images"), "--out", str(run_dir),
        "--max-images", "8", "--batch-size", "4", "--image-size", "32", "--working-size", "64",
        "--base-filters", "4", "--depth", "2", "--steps-per-epoch", "2", "--minutes", "0.25", "--verbose", "0",
    ]
    assert main(arguments) == 0
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    assert saved["minutes"] == 0.25 and saved["views"] == "crops"
    assert saved["epochs"] >= 1 and len(state["history"]) == saved["epochs"]
    # Every epoch records what its end cost, which the budget now counts.
    assert all(row["end_seconds"] > 0 for row in state["history"])
    # The same budget again: the run keeps its epochs and trains nothing more.
    assert main(arguments) == 0
    assert len(json.loads((run_dir / "state.json").read_text())["history"]) == saved["epochs"]


def test_recipe_files_match_the_built_in_recipes():
    from pathlib import Path

    from cm_unet_keras.config import build_config

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("cpu", "paper"):
        from_file = build_config(PretrainConfig, recipes / f"pretrain_{name}.yaml")
        built_in = build_config(PretrainConfig, (name, PRETRAIN_RECIPES[name]))
        assert from_file == built_in, name


def test_the_arcade_scale_recipe_is_the_cpu_recipe_with_native_scale_crops():
    import dataclasses
    from pathlib import Path

    from cm_unet_keras.config import build_config

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    arcade = build_config(PretrainConfig, recipes / "pretrain_arcade.yaml")
    cpu = build_config(PretrainConfig, ("cpu", PRETRAIN_RECIPES["cpu"]))
    changed = {f.name for f in dataclasses.fields(PretrainConfig) if getattr(arcade, f.name) != getattr(cpu, f.name)}
    assert changed == {"working_size", "crop_area"}
    # Decoded at native size, crops of 128-256 px of a 512 px frame shown at 128 px: vessels at 0.5-1x native width.
    assert not arcade.working_size
    sides = [512 * area ** 0.5 for area in arcade.crop_area]
    assert [arcade.image_size / side for side in sides] == [1.0, 0.5]
