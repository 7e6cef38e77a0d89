"""Tests for cm_unet_keras.export: the TF Serving SavedModel and its layout.

A tiny untrained U-Net (depth 2, 4 filters) is enough: the export must
reproduce whatever the Keras model computes, through the package's own
inference path, on real angiograms.
"""

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from cm_unet_keras import CMUNet
from cm_unet_keras import __version__
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.readers import read_angiogram
from cm_unet_keras.export import export_model
from cm_unet_keras.export.serving import METADATA_ASSET
from cm_unet_keras.inference.predict import segment_angiogram

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.5
TOLERANCE = 1e-5
# onnxruntime sums the normalisation statistics of a 512x512 image in float32
# less accurately than TensorFlow (3e-4 off in normalised values, measured);
# the network itself agrees to 5e-7.
ONNX_TOLERANCE = 1e-3

# The REST bodies quoted in docs/serving.md: the same 2x3 8-bit angiogram in the
# row ("instances") format and as a base64 PNG.
README_INSTANCES_BODY = """{"signature_name": "serving_default",
 "instances": [[[[12], [80], [95]], [[10], [120], [101]]]]}"""
README_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAMAAAACCAAAAAC4HznGAAAAEElEQVQI12PkceFn+qfBBgAFnwGPbCBP2gAAAABJRU5ErkJggg=="
)
README_B64_BODY = (
    '{"signature_name": "predict_image_bytes", "instances": [{"b64": "' + README_PNG_B64 + '"}]}'
)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")  # the reference computes in float32, as exports do
    try:
        model = CMUNet(base_filters=4, depth=2)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def exported(tiny_model_file, tmp_path_factory):
    """The tiny model exported once as BASE/tiny/1, and loaded."""
    base = tmp_path_factory.mktemp("serving")
    path = export_model(tiny_model_file[0], base, "tiny", 1, training_data="none (test)")
    return path, tf.saved_model.load(str(path))


@pytest.fixture(scope="module")
def angiograms(shared_data):
    """Raw angiograms at the issue's sizes: 300x300 8-bit, 512x512 16-bit, 517x333."""
    cimat = read_angiogram(shared_data / "xca_vessels" / "train" / "1.png")
    xcad = read_angiogram(shared_data / "xcad_sample" / "test" / "images" / "01251_32.png")
    low_bits = np.random.default_rng(0).integers(0, 256, xcad.shape)
    xcad_16bit = (xcad * 256 + low_bits).astype(np.float32)
    crop = cv2.resize(xcad, (333, 517), interpolation=cv2.INTER_AREA)
    return {"300x300": cimat, "512x512": xcad_16bit, "517x333": np.round(crop).astype(np.float32)}


def assert_matches_reference(outputs, model, angiogram, index=0, tolerance=TOLERANCE, tta=False):
    """Served outputs of image `index` equal segment_angiogram's result."""
    height, width = angiogram.shape
    for name, value in outputs.items():
        assert value.shape.rank == 4 and value.shape[-1] == 1, f"{name}: shape {value.shape}, not [batch, H, W, 1]"
    probability = outputs["probability"].numpy()[index, :height, :width, 0]
    mask = outputs["mask"].numpy()[index, :height, :width, 0]
    expected = segment_angiogram(model, angiogram, tta=tta)
    assert outputs["probability"].dtype == tf.float32 and outputs["mask"].dtype == tf.uint8
    assert np.max(np.abs(probability - expected)) <= tolerance
    np.testing.assert_array_equal(mask, (probability >= THRESHOLD).astype(np.uint8))
    undecided = np.abs(expected - THRESHOLD) <= tolerance
    np.testing.assert_array_equal(mask[~undecided], (expected >= THRESHOLD)[~undecided])


@pytest.mark.parametrize("size", ["300x300", "512x512", "517x333"])
def test_serving_default_matches_keras_inference(exported, tiny_model_file, angiograms, size):
    angiogram = angiograms[size]
    outputs = exported[1].signatures["serving_default"](angiogram=tf.constant(angiogram[None, ..., None]))
    assert outputs["probability"].shape == (1, *angiogram.shape, 1)
    assert_matches_reference(outputs, tiny_model_file[1], angiogram)


def test_serving_default_normalises_each_image_of_a_batch(exported, tiny_model_file, shared_data):
    pair = [read_angiogram(shared_data / "xca_vessels" / "train" / f"{n}.png") for n in (2, 3)]
    pair[1] = pair[1] * 3.0 + 40.0  # another exposure: normalisation must undo it per image
    outputs = exported[1].signatures["serving_default"](angiogram=tf.constant(np.stack(pair)[..., None]))
    for index, angiogram in enumerate(pair):
        assert_matches_reference(outputs, tiny_model_file[1], angiogram, index)


def saved_model_cli_signatures(folder):
    """`saved_model_cli show --all` parsed into {signature: {inputs/outputs: {name: (dtype, shape)}}}."""
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run(
        [str(cli), "show", "--all", "--dir", str(folder)], capture_output=True, text=True, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    ).stdout
    signatures = {}
    for block in re.split(r"\nsignature_def\['", shown)[1:]:
        name = block.split("'", 1)[0]
        signatures[name] = {"inputs": {}, "outputs": {}}
        for kind, tensor, dtype, shape in re.findall(
            r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))", block
        ):
            signatures[name][kind][tensor] = (dtype, shape)
    return signatures


def test_saved_model_cli_lists_both_signatures(exported):
    signatures = saved_model_cli_signatures(exported[0])
    outputs = {"probability": ("DT_FLOAT", "(-1, -1, -1, 1)"), "mask": ("DT_UINT8", "(-1, -1, -1, 1)")}
    assert signatures["serving_default"] == {
        "inputs": {"angiogram": ("DT_FLOAT", "(-1, -1, -1, 1)")}, "outputs": outputs,
    }
    assert signatures["predict_image_bytes"] == {
        "inputs": {"image_bytes": ("DT_STRING", "(-1)")}, "outputs": outputs,
    }


def decode_rest_request(body, loaded):
    """Decode a TF Serving REST predict body the way the server does.

    Rules of the TF Serving REST API (row format): `signature_name` picks
    the signature (default `serving_default`); `instances` is a list with one
    entry per batch element, stacked into the batch; with one named input an
    entry is that input's value, otherwise an object keyed by input name;
    `{"b64": s}` is base64-decoded into bytes for string tensors; numbers
    take the input's dtype.
    """
    request = json.loads(body)
    signature = loaded.signatures[request.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    instances = request["instances"]
    if len(specs) == 1 and not (isinstance(instances[0], dict) and "b64" not in instances[0]):
        instances = [{next(iter(specs)): instance} for instance in instances]

    def value(item):
        if isinstance(item, dict):
            return base64.b64decode(item["b64"])
        return [value(element) for element in item] if isinstance(item, list) else item

    inputs = {
        name: tf.constant([value(instance[name]) for instance in instances], dtype=spec.dtype)
        for name, spec in specs.items()
    }
    return signature, inputs


def test_rest_bodies_decoded_as_tf_serving_give_the_same_result(exported, tiny_model_file, angiograms):
    loaded, model = exported[1], tiny_model_file[1]
    cimat = angiograms["300x300"]
    body = json.dumps(
        {"signature_name": "serving_default", "instances": [cimat[..., None].astype(int).tolist()]}
    )
    signature, inputs = decode_rest_request(body, loaded)
    assert_matches_reference(signature(**inputs), model, cimat)

    png_8bit = cv2.imencode(".png", cimat.astype(np.uint8))[1].tobytes()
    png_16bit = cv2.imencode(".png", angiograms["512x512"].astype(np.uint16))[1].tobytes()
    crop = angiograms["517x333"]
    jpeg = cv2.imencode(".jpg", crop.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    encoded = [png_8bit, png_16bit, jpeg]
    body = json.dumps({
        "signature_name": "predict_image_bytes",
        "instances": [{"b64": base64.b64encode(image).decode()} for image in encoded],
    })
    signature, inputs = decode_rest_request(body, loaded)
    outputs = signature(**inputs)
    assert outputs["probability"].shape == (3, 517, 512, 1)  # padded to the largest
    assert_matches_reference(outputs, model, cimat, 0)
    assert_matches_reference(outputs, model, angiograms["512x512"], 1)
    decoded_jpeg = tf.io.decode_jpeg(jpeg, channels=1).numpy()[..., 0].astype(np.float32)
    assert_matches_reference(outputs, model, decoded_jpeg, 2)
    assert not outputs["mask"].numpy()[0, 300:].any() and not outputs["mask"].numpy()[2, :, 333:].any()


def test_readme_rest_bodies(exported, tiny_model_file):
    signature, inputs = decode_rest_request(README_INSTANCES_BODY, exported[1])
    assert inputs["angiogram"].shape == (1, 2, 3, 1)
    angiogram = inputs["angiogram"].numpy()[0, ..., 0]
    from_instances = signature(**inputs)
    assert_matches_reference(from_instances, tiny_model_file[1], angiogram)

    signature, inputs = decode_rest_request(README_B64_BODY, exported[1])
    from_png = signature(**inputs)
    np.testing.assert_array_equal(from_png["probability"].numpy(), from_instances["probability"].numpy())
    np.testing.assert_array_equal(from_png["mask"].numpy(), from_instances["mask"].numpy())


def test_export_holds_one_copy_of_the_weights_and_metadata(exported, tiny_model_file):
    path, loaded = exported
    model_file, model = tiny_model_file
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    variables_bytes = sum(f.stat().st_size for f in (path / "variables").iterdir())
    assert weight_bytes <= variables_bytes < 1.1 * weight_bytes + 16_384
    assert variables_bytes < model_file.stat().st_size
    metadata = json.loads(Path(loaded.metadata_file.asset_path.numpy().decode()).read_text())
    assert (path / "assets" / METADATA_ASSET).is_file()
    assert metadata["threshold"] == THRESHOLD
    assert metadata["model"]["depth"] == 2 and metadata["model"]["base_filters"] == 4
    assert metadata["package_version"] == __version__
    assert metadata["training_data"] == "none (test)"


def snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(Path(folder).rglob("*")) if p.is_file()
    }


def test_existing_version_is_refused_without_overwrite(tiny_model_file, tmp_path):
    model_file = tiny_model_file[0]
    first = export_model(model_file, tmp_path, "tiny", 3)
    before = snapshot(first)
    with pytest.raises(InvalidInputError, match="overwrite"):
        export_model(model_file, tmp_path, "tiny", 3, threshold=0.3)
    assert snapshot(first) == before
    export_model(model_file, tmp_path, "tiny", 3, threshold=0.3, overwrite=True)
    metadata = json.loads((first / "assets" / METADATA_ASSET).read_text())
    assert metadata["threshold"] == 0.3
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["3"]  # no staging leftovers


def test_clahe_trained_model_is_refused(tiny_model_file, tmp_path):
    model_file = tmp_path / "run" / "model.keras"
    model_file.parent.mkdir()
    model_file.write_bytes(tiny_model_file[0].read_bytes())
    (model_file.parent / "config.yaml").write_text("clahe: true\nthreshold: 0.5\n")
    with pytest.raises(InvalidInputError, match="CLAHE"):
        export_model(model_file, tmp_path / "serving", "tiny", 1)
    assert not (tmp_path / "serving" / "tiny" / "1").exists()


def test_pretrained_only_model_is_refused_and_nothing_is_written(tmp_path, capsys):
    from cm_unet_keras.cli import main

    with pytest.raises(InvalidInputError, match="pretrained only"):
        export_model("cmunet_small_pretrained", tmp_path, "pretrained", 1)
    assert main(["export", "--model", "cmunet_small_pretrained", "--out", str(tmp_path), "--name", "p",
                 "--version", "1"]) != 0
    assert "pretrained only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_export_end_to_end(tiny_model_file, tmp_path, capsys):
    from cm_unet_keras.cli import main

    arguments = ["export", "--model", str(tiny_model_file[0]), "--out", str(tmp_path), "--name", "tiny",
                 "--version", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cm_unet_keras.cli", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    version = tmp_path / "tiny" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "variables" / "variables.index").is_file()
    # The refusal is the same code in this process (a second interpreter would import TensorFlow again).
    assert main(arguments) == 2 and "--overwrite" in capsys.readouterr().err


def test_tta_export_matches_tta_inference(tiny_model_file, angiograms, tmp_path):
    path = export_model(tiny_model_file[0], tmp_path, "tiny", 1, tta=True)
    served = tf.saved_model.load(str(path))
    angiogram = angiograms["300x300"]
    outputs = served.signatures["serving_default"](angiogram=tf.constant(angiogram[None, ..., None]))
    assert_matches_reference(outputs, tiny_model_file[1], angiogram, tta=True)
    plain = segment_angiogram(tiny_model_file[1], angiogram)
    assert np.abs(outputs["probability"].numpy()[0, ..., 0] - plain).max() > 1e-4  # the flips are in the graph
    metadata = json.loads((path / "assets" / METADATA_ASSET).read_text())
    assert metadata["test_time_augmentation"].startswith("mean of the four flips")


def test_onnx_export_matches_keras_inference(tiny_model_file, angiograms, tmp_path):
    # The `onnx` extra is part of the test install: missing is a failure, not a skip.
    import onnxruntime
    # As after a mixed_bfloat16 training run in the same process: the export must still be float32.
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        path = export_model(tiny_model_file[0], tmp_path, "tiny", 1, export_format="onnx")
    finally:
        keras.mixed_precision.set_global_policy(policy)
    session = onnxruntime.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    angiogram = angiograms["517x333"]
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {"angiogram": angiogram[None, ..., None]})
    outputs = {name: tf.constant(value) for name, value in zip(names, values)}
    assert_matches_reference(outputs, tiny_model_file[1], angiogram, tolerance=ONNX_TOLERANCE)
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["cm_unet_metadata"])
    assert metadata["format"] == "onnx" and metadata["threshold"] == THRESHOLD
