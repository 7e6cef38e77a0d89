"""ARCADE by its own protocol (recipes/arcade_protocol.py): nothing scored is trained on (issue 31)."""

import json
import shutil
from pathlib import Path

import pytest

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import index_images_masks


def test_protocol_refuses_a_scored_angiogram_under_another_name(recipe_module, shared_data, tmp_path):
    protocol = recipe_module("arcade_protocol")
    val = shared_data / "arcade_vessels" / "val"
    scored = index_images_masks(val / "images", val / "masks")[:3]
    train = tmp_path / "train"
    for folder in ("images", "masks"):
        (train / folder).mkdir(parents=True)
    # Two angiograms of other sources, and one scored ARCADE frame renamed.
    for index, source in enumerate(sorted((shared_data / "xcad_sample" / "test" / "images").glob("*.png"))):
        shutil.copy(source, train / "images" / f"x{index}.png")
        shutil.copy(shared_data / "xcad_sample" / "test" / "masks" / source.name, train / "masks" / f"x{index}.png")
    clean = index_images_masks(train / "images", train / "masks")
    protocol.check_disjoint(clean, scored)  # disjoint: accepted
    shutil.copy(scored[1].image_path, train / "images" / "renamed.png")
    shutil.copy(scored[1].mask_path, train / "masks" / "renamed.png")
    with pytest.raises(InvalidInputError, match=f"{Path(scored[1].image_path).name}.*1 of them are in the training set"):
        protocol.check_disjoint(index_images_masks(train / "images", train / "masks"), scored)


def test_protocol_scores_all_200_validation_pairs_and_trains_on_none(recipe_module, shared_data):
    protocol = recipe_module("arcade_protocol")
    scored = protocol.scored_records("arcade_val", shared_data)
    assert len(scored) == 200
    cimat, _ = protocol.training_parts(shared_data, shared_data / "arcade_vessels" / "val")
    holdout = {r.name for r in protocol.scored_records("cimat", shared_data)}
    assert len(cimat) == 30 and not holdout & {r.name for r in cimat}
    assert protocol.run_name(32, 4000, None, 0) == "w32_s4000_scratch"


def test_run_names_say_what_differs_from_the_presets_network(recipe_module):
    protocol = recipe_module("arcade_protocol")
    assert protocol.run_name(16, 4000, None, 0, conventions=True) == "w16_s4000_scratch_conventions"
    name = protocol.run_name(16, 4000, None, 1, depth=5, patch_size=256, batch_size=2)
    assert name == "w16_d5_s4000_p256b2_scratch_seed1"
    assert protocol.run_name(16, 4000, None, 0, patch_size=128, batch_size=4) == "w16_s4000_p128b4_scratch"


def test_with_conventions_each_source_states_its_own_and_each_part_is_scored_on_it(recipe_module, shared_data):
    protocol = recipe_module("arcade_protocol")
    val = shared_data / "arcade_vessels" / "val"
    cimat, arcade = protocol.training_parts(shared_data, val, conventions=True)
    assert {r.convention for r in cimat} == {"tree_catheter"} and {r.convention for r in arcade} == {"syntax"}
    plain_cimat, plain_arcade = protocol.training_parts(shared_data, val)
    assert {r.convention for r in plain_cimat + plain_arcade} == {None}
    assert [protocol.scored_convention(part, True) for part in protocol.SCORED] == ["syntax", "tree_catheter", "tree"]
    assert protocol.scored_convention("xcad", False) is None


def test_a_resumed_runs_time_counts_every_sitting_from_its_history(recipe_module, tmp_path):
    protocol = recipe_module("arcade_protocol")
    run = tmp_path / "run"
    run.mkdir()
    assert protocol.run_seconds(run, 12.5) == 12.5  # no history yet: the process's own time
    # Epochs 1-2 in one sitting, 3 after a resume: the columns TrainingRun writes.
    (run / "history.csv").write_text(
        "epoch,loss,val_dice,lr,train_seconds,val_seconds\n"
        "1,0.68,0.37,0.001,22.5,1.0\n2,0.48,0.38,0.002,15.0,0.5\n3,0.40,0.45,0.002,16.0,\n")
    assert protocol.run_seconds(run, 12.5) == pytest.approx(22.5 + 1.0 + 15.0 + 0.5 + 16.0)


def test_a_pretraining_start_must_show_a_pool_without_a_test_split(recipe_module, tmp_path):
    protocol = recipe_module("arcade_protocol")
    assert protocol.check_pretraining_pool(None) is None
    assert protocol.check_pretraining_pool("cmunet_small_xca") is None  # a preset: its card states its pool
    run = tmp_path / "pretrain"
    run.mkdir()
    with pytest.raises(InvalidInputError, match="does not say which angiograms"):
        protocol.check_pretraining_pool(run)
    clean = ["data/arcade_stenosis/train/images/1.png", "data/arcade_syntax_train/images/7.png", "cine.dcm#frame=3"]
    (run / "images.json").write_text(json.dumps({"count": 3, "images": clean}))
    assert protocol.check_pretraining_pool(run) == 3
    (run / "images.json").write_text(json.dumps({"count": 4, "images": clean + ["data/arcade_stenosis/test/images/9.png"]}))
    with pytest.raises(InvalidInputError, match="1 of the 4 angiograms") as refused:
        protocol.check_pretraining_pool(run)
    assert "arcade_stenosis/test/images/9.png" in str(refused.value)


def test_arcade_alone_is_named_and_refused_with_conventions(recipe_module):
    protocol = recipe_module("arcade_protocol")
    assert protocol.run_name(16, 4000, None, 1, patch_size=384, batch_size=2, arcade_only=True) == \
        "w16_s4000_p384b2_scratch_arcadeonly_seed1"
    with pytest.raises(SystemExit):
        protocol.main(["--arcade-train", "unused", "--sources", "arcade", "--conventions"])
