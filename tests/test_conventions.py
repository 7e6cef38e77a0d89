"""Mask conventions: one output per convention, trained with the labels each
mask implies, and picked by name at inference (`--convention`).

Tiny networks (width 4, depth 2) on 64x64 crops; expected values are
written out by hand from the rule (syntax ⊆ tree ⊆ tree_catheter), not
taken from the code under test."""

import dataclasses
import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from cm_unet_keras import CMUNet
from cm_unet_keras.cli import FINETUNE_FLAGS, _flag_values, build_parser, main
from cm_unet_keras.config import FinetuneConfig, build_config
from cm_unet_keras.data.conventions import CONVENTIONS, DEFAULT_CONVENTION
from cm_unet_keras.data.pipeline import LabelledAngiogram, PatchSampler, implied_targets, preprocess_angiogram
from cm_unet_keras.data.readers import read_angiogram
from cm_unet_keras.export import export_model
from cm_unet_keras.export.serving import METADATA_ASSET
from cm_unet_keras.inference.predict import load_model, segment
from cm_unet_keras.models.full_image import predict_normalized
from cm_unet_keras.models.saving import float32_policy
from cm_unet_keras.training.finetune import finetune
from cm_unet_keras.training.losses import DiceBCELoss

THREE = ("tree_catheter", "tree", "syntax")
UNKNOWN = "error: unknown convention 'catheter': choose one of syntax, tree, tree_catheter"


def test_the_conventions_are_named_once_narrowest_first():
    assert list(CONVENTIONS) == ["syntax", "tree", "tree_catheter"]
    assert DEFAULT_CONVENTION == "tree"
    assert all(description and "\n" not in description for description in CONVENTIONS.values())


@pytest.fixture(scope="module")
def three_outputs(tmp_path_factory):
    """A tiny U-Net with one output per convention, saved as a `.keras` file."""
    keras.utils.set_random_seed(0)
    # In float32 whatever policy an earlier test in this worker left (a
    # fine-tune leaves mixed_bfloat16): the tests compare it with float32 paths.
    with float32_policy():
        model = CMUNet(base_filters=4, depth=2, conventions=THREE)
    path = tmp_path_factory.mktemp("three") / "model.keras"
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def angiogram(shared_data):
    return read_angiogram(shared_data / "xca_vessels" / "train" / "1.png")


def test_one_output_per_convention_round_trips_and_single_output_is_its_channel(three_outputs):
    path, model = three_outputs
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype("float32")
    outputs = model(images).numpy()
    assert outputs.shape == (2, 32, 32, 3)
    assert model.get_layer("segmentation_head").get_weights()[0].shape == (1, 1, 4, 3)
    config = json.loads(json.dumps(model.get_config()))
    assert config["conventions"] == list(THREE)
    assert CMUNet.from_config(config).conventions == THREE
    with float32_policy():  # as the fixture was built, whatever policy the worker has now
        loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.conventions == THREE
    np.testing.assert_allclose(loaded(images).numpy(), outputs, atol=1e-6)
    for index, name in enumerate(THREE):
        single = model.single_output(name)
        assert single.conventions == (name,) and single.output.shape[-1] == 1
        np.testing.assert_array_equal(single(images).numpy()[..., 0], outputs[..., index])


def test_single_output_keeps_the_models_precision_whatever_the_process_policy(three_outputs):
    # As after a mixed_bfloat16 fine-tune in the same process: a float32
    # model's one-output copy must still compute in float32.
    images = np.random.default_rng(4).normal(size=(1, 32, 32, 1)).astype("float32")
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        single = three_outputs[1].single_output("tree")
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert single.get_layer("encoder_level0_conv1").compute_dtype == "float32"
    np.testing.assert_array_equal(single(images).numpy()[..., 0], three_outputs[1](images).numpy()[..., 1])


def test_a_one_output_unet_keeps_its_layers_and_the_shipped_presets_load(angiogram):
    one = CMUNet(base_filters=4, depth=2)
    assert one.conventions is None and one.get_config()["conventions"] is None
    assert one.get_layer("segmentation_head").get_weights()[0].shape == (1, 1, 4, 1)
    named = CMUNet(base_filters=4, depth=2, conventions=("tree",))
    assert [layer.name for layer in named.layers] == [layer.name for layer in one.layers]
    preset = CMUNet.from_preset("cmunet_small_xca")
    assert preset.conventions is None and preset.segmentation_settings.convention == "tree_catheter"
    plain = preset.segment(angiogram, precision="float32")
    named = preset.segment(angiogram, precision="float32", convention="tree_catheter")
    np.testing.assert_array_equal(plain.probability, named.probability)
    with pytest.raises(ValueError, match=r"^convention 'tree' is not one of this model's conventions \(tree_catheter\)$"):
        preset.segment(angiogram, convention="tree")


def test_unknown_repeated_or_missing_conventions_are_refused():
    with pytest.raises(ValueError, match="^unknown convention 'vessels': choose one of syntax, tree, tree_catheter$"):
        CMUNet(4, 2, conventions=("tree", "vessels"))
    with pytest.raises(ValueError, match="each may appear once"):
        CMUNet(4, 2, conventions=("tree", "tree"))
    with pytest.raises(ValueError, match="at least one"):
        CMUNet(4, 2, conventions=())


# A row of four pixels: two vessel pixels, then one the partial weights
# ignore (weight 0) and one down-weighted background pixel (weight 0.25).
MASK = [1.0, 1.0, 0.0, 0.0]
WEIGHT = [1.0, 1.0, 0.0, 0.25]
RANKS = {"syntax": 0, "tree": 1, "tree_catheter": 2}
# For outputs (tree_catheter, tree, syntax): the masks, then the weights.
EXPECTED = {
    # Narrowest: its vessels are every wider output's vessels; nothing else is known there.
    "syntax": ([MASK, MASK, MASK], [[1, 1, 0, 0], [1, 1, 0, 0], WEIGHT]),
    # Its vessels are tree_catheter's; its background is syntax's background.
    "tree": ([MASK, MASK, [0, 0, 0, 0]], [[1, 1, 0, 0], WEIGHT, [0, 0, 0, 0.25]]),
    # Widest: its background is everyone's background; its vessels say nothing to narrower outputs.
    "tree_catheter": ([MASK, [0, 0, 0, 0], [0, 0, 0, 0]], [WEIGHT, [0, 0, 0, 0.25], [0, 0, 0, 0.25]]),
}


@pytest.mark.parametrize("convention", list(EXPECTED))
def test_implied_targets_follow_set_inclusion(convention):
    mask = np.array(MASK, np.float32).reshape(1, 4, 1)
    weight = np.array(WEIGHT, np.float32).reshape(1, 4, 1)
    targets = implied_targets(mask, weight, RANKS[convention], [RANKS[name] for name in THREE]).numpy()[0]
    masks, weights = EXPECTED[convention]
    np.testing.assert_array_equal(targets[:, :3].T, np.array(masks, np.float32))
    np.testing.assert_array_equal(targets[:, 3:].T, np.array(weights, np.float32))


def test_the_loss_averages_the_channels_that_carry_weight():
    rng = np.random.default_rng(2)
    masks = (rng.random((2, 8, 8, 2)) > 0.6).astype("float32")
    weights = rng.random((2, 8, 8, 2)).astype("float32")
    prediction = rng.random((2, 8, 8, 2)).astype("float32")
    for loss in (DiceBCELoss(0.5), DiceBCELoss(0.5, cldice_weight=0.3)):
        alone = [loss.call(np.concatenate([masks[..., c:c + 1], weights[..., c:c + 1]], -1), prediction[..., c:c + 1])
                 for c in (0, 1)]
        both = loss.call(np.concatenate([masks, weights], -1), prediction)
        np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, rtol=1e-6)
        unknown = weights.copy()
        unknown[1, ..., 1] = 0.0  # image 1 says nothing about channel 1
        partly = loss.call(np.concatenate([masks, unknown], -1), prediction).numpy()
        np.testing.assert_allclose(partly, [(alone[0][0] + alone[1][0]) / 2, alone[0][1]], rtol=1e-6)
    with pytest.raises(ValueError, match="2 output channels but 3 target masks"):
        DiceBCELoss().call(np.zeros((1, 4, 4, 6), "float32"), prediction[:1, :4, :4])


def test_an_output_whose_labels_the_mask_does_not_imply_gets_no_gradient():
    # A syntax pair's patch without main segments: background for the
    # syntax output, unknown for tree and tree_catheter (side branches may be there).
    image = np.random.default_rng(3).normal(size=(64, 64, 1)).astype("float32")
    item = LabelledAngiogram("no_segment", image, np.zeros((64, 64, 1), np.uint8), convention="syntax")
    images, targets = next(iter(PatchSampler([item], 64, conventions=THREE).dataset(2)))
    assert targets.shape == (2, 64, 64, 6)
    keras.utils.set_random_seed(0)
    model = CMUNet(base_filters=4, depth=2, conventions=THREE)
    head = model.get_layer("segmentation_head")
    with tf.GradientTape() as tape:
        loss = DiceBCELoss()(targets, model(images, training=True))
    kernel, bias = tape.gradient(loss, head.trainable_weights)
    assert np.all(kernel.numpy()[..., :2] == 0) and np.all(bias.numpy()[:2] == 0)
    assert np.abs(kernel.numpy()[..., 2]).max() > 0 and bias.numpy()[2] > 0  # syntax: lower the probability


def test_a_sampler_for_several_outputs_needs_each_pairs_convention():
    item = LabelledAngiogram("unstated", np.zeros((64, 64, 1), np.float32), np.zeros((64, 64, 1), np.uint8))
    with pytest.raises(ValueError, match="no mask convention \\(unstated\\)"):
        PatchSampler([item], 64, conventions=THREE)


@pytest.fixture(scope="module")
def labelled(synthetic_dataset):
    records = synthetic_dataset(6, size=64, seed=3).records
    return [dataclasses.replace(r, convention=c) for r, c in zip(records, ["syntax", "tree_catheter", None] * 2)]


def _tiny(**overrides):
    values = dict(base_filters=4, depth=2, epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64, seed=0,
                  precision="float32", conventions=THREE, convention="tree", val_fraction=0.34)
    return FinetuneConfig(**{**values, **overrides})


def test_finetune_trains_one_output_per_convention_and_records_them(labelled, tmp_path):
    # ARCADE-like partially labelled pairs (their own loss weights) train beside them.
    partial = [dataclasses.replace(record, name=f"partial_{record.name}", convention="syntax") for record in labelled[:2]]
    lines = []
    result = finetune(_tiny(partial_ignore_vessel_like=True), labelled, tmp_path / "run", verbose=0,
                      partial_records=partial, log=lines.append)
    assert not [line for line in lines if line.startswith("warning:")]  # every output has pairs of its own
    assert result["epochs_done"] == 1 and result["n_val"] == 2 and np.isfinite(result["best_val_dice"])
    assert len(json.loads((tmp_path / "run" / "split.json").read_text())["partial"]) == 2
    model = keras.models.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert model.conventions == THREE and model.output.shape[-1] == 3
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["conventions"] == list(THREE) and recorded["convention"] == "tree"
    loaded = load_model(tmp_path / "run" / "model.keras")
    assert loaded.conventions == THREE
    # A one-output run is refused a validation pair of a convention it lacks.
    with pytest.raises(ValueError, match="convention 'tree' is not one of the model's outputs"):
        finetune(_tiny(conventions=("syntax",)), labelled, tmp_path / "other", verbose=0)
    with pytest.raises(ValueError, match="no mask convention"):
        finetune(_tiny(convention=None, val_fraction=0.0), labelled, tmp_path / "unstated", verbose=0)


def test_an_output_no_pair_follows_is_named_in_a_warning(labelled, tmp_path):
    # The unstated pairs become tree_catheter: no pair follows `tree`, as in the ARCADE protocol's run.
    lines = []
    finetune(_tiny(convention="tree_catheter", epochs=1, steps_per_epoch=1), labelled, tmp_path / "run", verbose=0,
             log=lines.append)
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1 and "'tree' convention" in warned[0]


def test_finetune_flags_name_the_outputs_and_the_pairs_convention(synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(6, size=64, seed=3)
    layout = ["finetune", "--images", str(data.images), "--masks", str(data.masks), "--out", str(tmp_path / "run")]
    args = build_parser().parse_args(layout + ["--conventions", *THREE, "--convention", "syntax"])
    config = build_config(FinetuneConfig, None, **_flag_values(args, FINETUNE_FLAGS))
    assert config.conventions == THREE and config.convention == "syntax"
    assert main(layout + ["--conventions", "tree", "catheter"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == UNKNOWN
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_segment_picks_an_output_by_convention(three_outputs, angiogram):
    model = load_model(three_outputs[0])
    normalized, fov = preprocess_angiogram(angiogram, return_fov=True)
    every = predict_normalized(three_outputs[1], normalized, fov=fov).numpy()
    default = segment(model, angiogram, precision="float32")
    np.testing.assert_allclose(default.probability, every[..., 1], atol=1e-6)  # tree
    for index, name in enumerate(THREE):
        result = model.segment(angiogram, precision="float32", convention=name)
        np.testing.assert_allclose(result.probability, every[..., index], atol=1e-6)
    with pytest.raises(ValueError, match="^unknown convention 'catheter'"):
        segment(model, angiogram, convention="catheter")


def test_a_one_output_run_has_the_convention_it_recorded(tmp_path, angiogram):
    keras.utils.set_random_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    CMUNet(base_filters=4, depth=2).save(run / "model.keras")
    (run / "config.yaml").write_text("convention: syntax\n")
    model = load_model(run / "model.keras")
    np.testing.assert_array_equal(segment(model, angiogram, convention="syntax").probability,
                                  segment(model, angiogram).probability)
    with pytest.raises(ValueError, match=r"^convention 'tree' is not one of this model's conventions \(syntax\)$"):
        segment(model, angiogram, convention="tree")
    (run / "config.yaml").write_text("threshold: 0.5\n")
    with pytest.raises(ValueError, match="this model has none"):
        segment(load_model(run / "model.keras"), angiogram, convention="syntax")


def test_cli_names_the_choices_in_one_line_and_segments_in_the_chosen_convention(
        three_outputs, shared_data, tmp_path, capsys):
    image = shared_data / "xca_vessels" / "train" / "1.png"
    model = str(three_outputs[0])
    assert main(["predict", str(image), "--model", model, "--out", str(tmp_path / "bad"), "--convention", "catheter"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [UNKNOWN]
    assert not (tmp_path / "bad").exists()
    assert main(["evaluate", "--pairs", str(shared_data / "xca_vessels" / "train"), "--model", model,
                 "--convention", "catheter"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [UNKNOWN]
    assert main(["select", str(image), "--model", model, "--count", "1", "--out", str(tmp_path / "chosen"),
                 "--convention", "catheter"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [UNKNOWN]
    assert not (tmp_path / "chosen").exists()
    assert main(["predict", str(image), "--model", model, "--out", str(tmp_path / "syntax"), "--convention", "syntax",
                 "--precision", "float32", "--quiet"]) == 0
    assert "convention syntax" in capsys.readouterr().err
    written = cv2.imread(str(tmp_path / "syntax" / "1_prob.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    for name in ("syntax", "tree"):
        expected = segment(load_model(model), read_angiogram(image), convention=name, precision="float32")
        differences = np.abs(written - np.round(expected.probability * 255.0)).max()
        assert differences <= 1.0 if name == "syntax" else differences > 1.0, name


def test_export_serves_the_chosen_output(three_outputs, angiogram, tmp_path, capsys):
    path = export_model(three_outputs[0], tmp_path, "three", 1, convention="syntax")
    served = tf.saved_model.load(str(path))
    outputs = served.signatures["serving_default"](angiogram=tf.constant(angiogram[None, ..., None]))
    assert outputs["probability"].shape == (1, *angiogram.shape, 1)
    expected = segment(load_model(three_outputs[0]), angiogram, convention="syntax", precision="float32")
    tree = segment(load_model(three_outputs[0]), angiogram, convention="tree", precision="float32")
    assert np.abs(tree.probability - expected.probability).max() > 1e-2  # the outputs differ
    assert np.abs(outputs["probability"].numpy()[0, ..., 0] - expected.probability).max() < 1e-5
    assert json.loads((path / "assets" / METADATA_ASSET).read_text())["convention"] == "syntax"
    # The `onnx` extra is part of the test install: missing is a failure, not a skip.
    import onnxruntime

    path = export_model(three_outputs[0], tmp_path, "three_onnx", 1, export_format="onnx", convention="syntax")
    session = onnxruntime.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    probability = session.run(["probability"], {"angiogram": angiogram[None, ..., None]})[0]
    assert probability.shape == (1, *angiogram.shape, 1)
    assert np.abs(probability[0, ..., 0] - expected.probability).max() < 1e-3  # onnxruntime's float32 sums
    assert main(["export", "--model", str(three_outputs[0]), "--out", str(tmp_path / "bad"), "--version", "1",
                 "--convention", "catheter"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [UNKNOWN]


def test_presets_list_their_conventions(capsys):
    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "conventions tree_catheter;" in lines["cmunet_small_xca"]
    assert "conventions tree_catheter;" in lines["cmunet_small_general"]
    assert "conventions none (head never trained)" in lines["cmunet_small_pretrained"]


def test_a_search_starts_its_folds_from_weights_of_the_outputs_they_train(tmp_path):
    from cm_unet_keras.tuning.hypermodel import FinetuneHyperModel

    base = FinetuneConfig(base_filters=4, depth=2, conventions=THREE, precision="float32")
    hypermodel = FinetuneHyperModel(base, {}, [], tmp_path, tmp_path / "init.weights.h5")
    CMUNet(base_filters=4, depth=2, conventions=THREE).set_weights(hypermodel.initial_weights())
