"""Fixtures shared by the test modules: the real angiograms, synthetic
datasets written once per session, an nnU-Net dataset, DICOM cine runs,
the recipe scripts as modules."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(autouse=True)
def float32_at_start():
    """Every test starts under Keras' float32 policy: a fine-tune leaves
    mixed_bfloat16 as the process's global policy, and the suite's workers
    run test files in an order that varies between runs. A test that needs
    another policy sets it itself."""
    keras = sys.modules.get("keras")
    if keras is not None:  # never imported here: a test that checks Keras stays unloaded keeps it so
        keras.mixed_precision.set_global_policy("float32")
    yield


@pytest.fixture(scope="session")
def shared_data():
    """The public angiograms in ../shared/data (see its README.md).

    Missing data is a broken checkout, not a reason to skip: tests fail.
    """
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"shared test data not found at {folder}: the tests read the real "
            "angiograms from ../shared/data next to the project root"
        )
    return folder


@pytest.fixture(scope="session")
def recipe_module():
    """`recipe_module(name)`: the script `recipes/<name>.py` imported as a
    module (recipes are scripts, not a package)."""

    def load(name):
        path = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """`synthetic_dataset(count, size, seed)`: synthetic angiograms and vessel
    masks (`images/`, `masks/`), written once per session for each
    (count, size, seed); returns `folder`, `images`, `masks` and `records`.
    Read them, do not change them: other tests share the folder."""
    from cm_unet_keras.data.layouts import index_images_masks
    from cm_unet_keras.data.synthetic import write_synthetic_dataset

    written = {}

    def dataset(count, size=64, seed=0):
        if (count, size, seed) not in written:
            folder = tmp_path_factory.mktemp(f"synthetic_{count}x{size}_seed{seed}")
            write_synthetic_dataset(folder, count, size=size, seed=seed)
            written[count, size, seed] = SimpleNamespace(
                folder=folder, images=folder / "images", masks=folder / "masks",
                records=index_images_masks(folder / "images", folder / "masks"),
            )
        return written[count, size, seed]

    return dataset


@pytest.fixture
def nnunet_dataset(tmp_path, shared_data):
    """An nnU-Net raw dataset written from 6 CIMAT pairs: 4 training and
    2 test cases, 0/1 label maps, `dataset.json` as nnU-Net v2 writes it."""
    import json

    import cv2

    folder = tmp_path / "Dataset501_XCA"
    source = shared_data / "xca_vessels" / "train"
    for subset, stems in (("Tr", ("1", "2", "3", "4")), ("Ts", ("5", "6"))):
        (folder / f"images{subset}").mkdir(parents=True)
        (folder / f"labels{subset}").mkdir()
        for stem in stems:
            case = f"xca_{int(stem):03d}"
            cv2.imwrite(str(folder / f"images{subset}" / f"{case}_0000.png"), cv2.imread(str(source / f"{stem}.png")))
            vessel = cv2.imread(str(source / f"{stem}_gt.png"), cv2.IMREAD_GRAYSCALE) >= 128
            cv2.imwrite(str(folder / f"labels{subset}" / f"{case}.png"), vessel.astype("uint8"))
    dataset = {
        "channel_names": {"0": "X-ray"},
        "labels": {"background": 0, "vessel": 1},
        "numTraining": 4,
        "file_ending": ".png",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


@pytest.fixture(scope="session")
def xa_cine_writer():
    """`cm_unet_keras.data.cine.write_xa_cine`, for the test modules."""
    from cm_unet_keras.data.cine import write_xa_cine

    return write_xa_cine


# The contrast of `contrast_cine`: a bolus peaking between frames 14 and 15.
CINE_FRAMES, CINE_PEAK, CINE_WIDTH = 30, 14.5, 5.0


@pytest.fixture(scope="session")
def contrast_cine(shared_data, tmp_path_factory):
    """A 30-frame 512x512 XA cine (`write_xa_cine`) whose contrast rises and
    falls: CIMAT angiogram 1 with its vessels inpainted away is the frame
    without contrast, and frame t adds back `exp(-((t - 14.5) / 5)^2)` of the
    vessels' darkening, plus noise. Returns `(path, contrast per frame)`."""
    import cv2
    import numpy as np

    from cm_unet_keras.data.cine import write_xa_cine

    folder = shared_data / "xca_vessels" / "train"
    angiogram = cv2.imread(str(folder / "1.png"), cv2.IMREAD_GRAYSCALE)
    vessels = cv2.imread(str(folder / "1_gt.png"), cv2.IMREAD_GRAYSCALE) >= 128
    wide = cv2.dilate(vessels.astype(np.uint8), np.ones((5, 5), np.uint8))
    background = cv2.inpaint(angiogram, wide, 5, cv2.INPAINT_TELEA).astype(np.float32)
    darkening = angiogram.astype(np.float32) - background
    contrast = np.exp(-(((np.arange(CINE_FRAMES) - CINE_PEAK) / CINE_WIDTH) ** 2))
    rng = np.random.default_rng(0)
    frames = []
    for level in contrast:
        frame = cv2.resize(background + level * darkening, (512, 512), interpolation=cv2.INTER_LINEAR)
        frames.append(np.clip(frame + rng.normal(0.0, 2.0, frame.shape), 0, 255))
    path = tmp_path_factory.mktemp("contrast_cine") / "run.dcm"
    write_xa_cine(path, np.round(np.stack(frames)))
    return path, contrast
