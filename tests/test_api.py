"""The flat Python API: `from cm_unet_keras import ...`, `CMUNet.from_preset`
and `segment` on raw angiograms of any size, files, batches and cine runs."""

import json
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

import cm_unet_keras
from cm_unet_keras import CMUNet
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.readers import read_angiogram
from cm_unet_keras.inference.predict import segment_angiogram


def test_the_flat_api_is_importable_from_the_top_and_lazy():
    from cm_unet_keras import (  # noqa: F401
        ContrastiveMaskedPretrainer, FinetuneConfig, PretrainConfig, finetune, load_model, pretrain,
        read_angiogram, segment,
    )
    from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer as pretrainer_class
    from cm_unet_keras.training.finetune import finetune as finetune_function

    assert ContrastiveMaskedPretrainer is pretrainer_class and finetune is finetune_function
    assert set(cm_unet_keras.__all__) >= {"CMUNet", "ContrastiveMaskedPretrainer", "read_angiogram", "finetune",
                                          "pretrain", "segment", "load_model"}
    with pytest.raises(AttributeError, match="no attribute 'segmnt'"):
        cm_unet_keras.segmnt  # noqa: B018
    code = "import sys, cm_unet_keras; print(sorted(m for m in sys.modules if m.startswith('cm_unet_keras.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = done.stdout.strip().splitlines()[-1]
    for heavy in ("training.pretrain", "training.finetune", "inference.predict", "models.pretrainer"):
        assert f"cm_unet_keras.{heavy}'" not in loaded, loaded


@pytest.fixture(scope="module")
def xca_model():
    return CMUNet.from_preset("cmunet_small_xca")


def test_from_preset_segments_a_raw_angiogram_of_any_size_and_range(xca_model, shared_data):
    path = shared_data / "xca_vessels" / "train" / "1.png"
    raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # 300x300: not a multiple of 16
    probability, vessel_mask = xca_model.segment(raw, precision="float32")
    expected = segment_angiogram(xca_model, read_angiogram(path))
    np.testing.assert_allclose(probability, expected, atol=1e-6)
    np.testing.assert_array_equal(vessel_mask, expected >= 0.5)  # the card's threshold
    assert vessel_mask.dtype == bool and 0.01 < vessel_mask.mean() < 0.2
    # Another intensity scale (a 16-bit export of the same frame): the same vessels.
    rescaled = xca_model.segment(raw.astype(np.uint16) * 257 + 1000, precision="float32").vessel_mask
    assert (rescaled == vessel_mask).mean() > 0.999
    # A file path, and a 512x512 ARCADE frame stored as RGB.
    np.testing.assert_allclose(cm_unet_keras.segment(xca_model, path, precision="float32").probability,
                               probability, atol=1e-6)
    arcade = xca_model.segment(shared_data / "arcade_stenosis" / "train" / "images" / "1.png")
    assert arcade.probability.shape == (512, 512)


def test_batches_lists_and_cine_runs(xca_model, shared_data, tmp_path, xa_cine_writer):
    from pydicom.uid import RLELossless

    frames = np.stack([
        cv2.imread(str(shared_data / "xca_vessels" / "train" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)[:160, :144]
        for n in (1, 2, 3)
    ])
    single = [segment_angiogram(xca_model, frame.astype(np.float32)) for frame in frames]
    batch = xca_model.segment(frames, precision="float32")
    assert batch.probability.shape == (3, 160, 144) and batch.vessel_mask.shape == (3, 160, 144)
    np.testing.assert_allclose(batch.probability, np.stack(single), atol=1e-5)
    listed = xca_model.segment([frames[0], frames[1][:100]], precision="float32")
    assert [item.probability.shape for item in listed] == [(160, 144), (100, 144)]
    cine = xa_cine_writer(tmp_path / "run.dcm", frames, RLELossless)
    np.testing.assert_allclose(xca_model.segment(cine, precision="float32").probability, batch.probability,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        xca_model.segment(np.zeros((2, 3, 4, 5)))


def test_threshold_and_clahe_come_from_the_run_folder(tmp_path, shared_data):
    run = tmp_path / "run"
    run.mkdir()
    import keras

    keras.utils.set_random_seed(0)  # an untrained model: unseeded, some draws put no pixel between 0.45 and 0.5
    CMUNet(base_filters=4, depth=2).save(run / "model.keras")
    (run / "config.yaml").write_text("clahe: true\nthreshold: 0.45\n")  # as `finetune --clahe` writes it
    model = cm_unet_keras.load_model(run / "model.keras")
    path = shared_data / "xca_vessels" / "train" / "2.png"
    expected = segment_angiogram(model, read_angiogram(path), clahe=True)
    probability, vessel_mask = model.segment(path, precision="float32")
    np.testing.assert_allclose(probability, expected, atol=1e-6)
    np.testing.assert_array_equal(vessel_mask, expected >= 0.45)
    assert not np.array_equal(vessel_mask, expected >= 0.5)  # 0.45 made a difference
    overridden = model.segment(path, threshold=0.5, clahe=False, precision="float32")
    np.testing.assert_array_equal(overridden.vessel_mask, segment_angiogram(model, read_angiogram(path)) >= 0.5)


def test_pretrained_only_models_warn_on_load_and_refuse_to_segment(tmp_path):
    from cm_unet_keras import ContrastiveMaskedPretrainer
    from cm_unet_keras.models.pretrainer import PRETRAINED_WEIGHTS, PRETRAINER_CONFIG
    from cm_unet_keras.training.pretrain import save_pretrained_weights

    angiogram = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.float32)
    with pytest.warns(UserWarning, match="cmunet_small_pretrained: pretrained only"):
        preset = CMUNet.from_preset("cmunet_small_pretrained")
    with pytest.raises(InvalidInputError, match="segmentation head was never trained") as refused:
        preset.segment(angiogram)
    assert "\n" not in str(refused.value)

    run = tmp_path / "pretraining"
    run.mkdir()
    pretrainer = ContrastiveMaskedPretrainer(base_filters=4, depth=2, projection_dim=8, projection_hidden_dim=8)
    save_pretrained_weights(pretrainer, run / PRETRAINED_WEIGHTS)
    (run / PRETRAINER_CONFIG).write_text(json.dumps(pretrainer.get_config()))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(InvalidInputError, match="never trained"):
            cm_unet_keras.segment(str(run), angiogram)
    with pytest.warns(UserWarning, match="pretrained only"):
        unet = cm_unet_keras.load_model(run)
    assert unet.segmentation_settings.pretrained_only
    with pytest.raises(InvalidInputError, match="never trained"):
        unet.segment(angiogram)


def test_predict_command_refuses_a_pretrained_only_model(tmp_path, shared_data, capsys):
    from cm_unet_keras.cli import main

    code = main(["predict", "--model", "cmunet_small_pretrained", "--out", str(tmp_path / "out"),
                 str(shared_data / "xca_vessels" / "train" / "1.png")])
    err = capsys.readouterr().err
    assert code == 2 and "never trained" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bfloat16_inference_agrees_with_float32(xca_model, shared_data):
    """The fast path (`precision="auto"` is bfloat16 on AVX512_BF16 CPUs):
    masks agree with float32's to Dice >= 0.99 on CIMAT and ARCADE frames."""
    paths = [shared_data / "xca_vessels" / "train" / f"{n}.png" for n in (2, 3)]
    paths += [shared_data / "arcade_vessels" / "val" / "images" / f"{n}.png" for n in (1, 2)]
    frames = [read_angiogram(path) for path in paths]
    exact = xca_model.segment(frames, precision="float32")
    fast = xca_model.segment(frames, precision="mixed_bfloat16")
    for reference, result in zip(exact, fast):
        a, b = reference.vessel_mask, result.vessel_mask
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99
        assert np.abs(reference.probability - result.probability).mean() < 0.01
        assert not np.array_equal(reference.probability, result.probability)  # it did run in bfloat16


def test_predict_files_batches_mixed_sizes_in_order_and_writes_every_output(xca_model, shared_data, tmp_path):
    import shutil

    from cm_unet_keras.inference.predict import predict_files

    folder = tmp_path / "in"
    folder.mkdir()
    sources = [shared_data / "xca_vessels" / "train" / f"{n}.png" for n in (1, 2, 3)]
    sources += [shared_data / "arcade_vessels" / "val" / "images" / f"{n}.png" for n in (1, 2)]
    for index, source in enumerate(sources):  # 300, 300, 300, 512, 512 px; a size change mid-batch
        shutil.copy(source, folder / f"{index:02d}.png")
    lines = []
    batched = predict_files(xca_model, [folder], tmp_path / "b3", log=lines.append, batch_size=3, precision="float32")
    single = predict_files(xca_model, [folder], tmp_path / "b1", log=None, batch_size=1, precision="float32")
    assert [p["mask"].name for p in batched] == [f"{i:02d}_mask.png" for i in range(5)]
    assert [line.split(":")[0] for line in lines] == [f"{i:02d}" for i in range(5)]
    for one, three in zip(single, batched):
        for kind in ("mask", "prob", "overlay"):
            a, b = (cv2.imread(str(p[kind]), cv2.IMREAD_UNCHANGED).astype(int) for p in (one, three))
            assert np.abs(a - b).max() <= 1, (one[kind], kind)


def test_decoding_runs_ahead_on_a_thread_and_errors_arrive_in_order():
    # predict's decoding thread: items come out in order; an error raised by
    # the source arrives after the items before it; closing early stops the
    # thread.
    import threading

    from cm_unet_keras.models.segmentation import prefetched

    producer_threads = []

    def source(fail_at=None):
        for i in range(20):
            producer_threads.append(threading.current_thread().name)
            if i == fail_at:
                raise ValueError(f"unreadable item {i}")
            yield i

    assert list(prefetched(source(), 3)) == list(range(20))
    assert set(producer_threads) == {"cm-unet-decode"}
    seen = []
    with pytest.raises(ValueError, match="unreadable item 7"):
        for item in prefetched(source(fail_at=7), 3):
            seen.append(item)
    assert seen == list(range(7))
    before = set(threading.enumerate())  # other tests' pipelines may still be winding down
    early = prefetched(source(), 2)
    assert next(early) == 0
    started = [t for t in threading.enumerate() if t.name == "cm-unet-decode" and t not in before]
    assert len(started) == 1
    early.close()
    assert not started[0].is_alive()


def test_a_preset_loads_in_float32_whatever_policy_an_earlier_job_left():
    """A fine-tune in the same process leaves mixed_bfloat16 set on such CPUs;
    a model loaded after it must still compute in float32 (the exact path)."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = CMUNet.from_preset("cmunet_small_xca")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert {layer.compute_dtype for layer in model.layers if layer.weights} == {"float32"}
