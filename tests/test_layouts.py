"""Tests for cm_unet_keras.data.layouts, on the shared data and tmp folders."""

import ast
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data import layouts
from cm_unet_keras.data.cine import xa_dataset
from cm_unet_keras.data import readers
from cm_unet_keras.data.layouts import AngiogramRecord
from cm_unet_keras.data.layouts import index_images_masks
from cm_unet_keras.data.layouts import index_pairs
from cm_unet_keras.data.layouts import index_unlabeled
from cm_unet_keras.data.layouts import natural_sort_key
from cm_unet_keras.data.layouts import read_pair
from cm_unet_keras.data.layouts import validate_records


def write_png(path, pixels=None, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = np.full(size, 100, np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def write_mask(path, size=(8, 8)):
    mask = np.zeros(size, np.uint8)
    mask[2:5, 3:6] = 255
    return write_png(path, mask)


def write_cine(path, frame_count, with_pixels=True):
    ds = xa_dataset(4, 5, frame_count)
    if with_pixels:
        frames = np.arange(frame_count, dtype=np.uint8)[:, None, None]
        ds.PixelData = np.broadcast_to(frames, (frame_count, 4, 5)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- the real shared data ---------------------------------------------------


def test_index_pairs_on_xca_vessels(shared_data):
    records = index_pairs(shared_data / "xca_vessels" / "train")
    assert len(records) == 40
    assert [record.name for record in records] == [str(n) for n in range(1, 41)]
    for record in records:
        assert Path(record.image_path).name == f"{record.name}.png"
        assert Path(record.mask_path).name == f"{record.name}_gt.png"
        assert record.frame is None
    valid, skipped = validate_records(records)
    assert valid == records and skipped == []


def test_index_images_masks_on_xcad(shared_data):
    test_dir = shared_data / "xcad_sample" / "test"
    records = index_images_masks(test_dir / "images", test_dir / "masks")
    assert [record.name for record in records] == ["01251_32", "02208_30"]
    for record in records:
        angiogram, vessel_mask = read_pair(record)
        assert angiogram.shape == vessel_mask.shape == (512, 512)
        assert angiogram.dtype == np.float32 and vessel_mask.dtype == np.uint8
        assert set(np.unique(vessel_mask)) == {0, 1}


def test_index_unlabeled_on_arcade_skips_masks(shared_data):
    root = shared_data / "arcade_stenosis"
    records = index_unlabeled(root)
    assert len(records) == 1500
    names = [record.name for record in records]
    assert len(set(names)) == len(names)
    splits = [Path(record.image_path).relative_to(root).parts for record in records]
    assert all(parts[1] == "images" for parts in splits)
    assert sum(parts[0] == "train" for parts in splits) == 1000
    assert sum(parts[0] == "val" for parts in splits) == 200
    assert sum(parts[0] == "test" for parts in splits) == 300
    assert all(record.mask_path is None and record.frame is None for record in records)
    # 1.png is in every split, so each gets its folders as a prefix.
    assert {"train_images_1", "val_images_1", "test_images_1"} <= set(names)
    # 1000.png is only in train: its name stays the stem.
    assert "1000" in names


# --- natural order ----------------------------------------------------------


def test_natural_sort_key_orders_numbers_by_value():
    names = ["10", "2", "1", "img10", "img2", "1b", "1a"]
    assert sorted(names, key=natural_sort_key) == [
        "1",
        "1a",
        "1b",
        "2",
        "10",
        "img2",
        "img10",
    ]


def test_index_pairs_is_in_natural_order(tmp_path):
    for stem in ("10", "2", "1", "21"):
        write_png(tmp_path / f"{stem}.png")
        write_mask(tmp_path / f"{stem}_gt.png")
    records = index_pairs(tmp_path)
    assert [record.name for record in records] == ["1", "2", "10", "21"]


# --- pair layouts: errors ---------------------------------------------------


def test_missing_mask_names_image_and_expected_mask(tmp_path):
    write_png(tmp_path / "1.png")
    write_mask(tmp_path / "1_gt.png")
    write_png(tmp_path / "2.png")
    with pytest.raises(InvalidInputError) as caught:
        index_pairs(tmp_path)
    assert caught.value.path == str(tmp_path / "2.png")
    assert str(tmp_path / "2_gt.png") in caught.value.problem


def test_mask_without_image_is_an_error(tmp_path):
    write_png(tmp_path / "1.png")
    write_mask(tmp_path / "1_gt.png")
    write_mask(tmp_path / "7_gt.png")
    with pytest.raises(InvalidInputError, match="without an angiogram") as caught:
        index_pairs(tmp_path)
    assert caught.value.path == str(tmp_path / "7_gt.png")


def test_empty_and_missing_folders_are_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(InvalidInputError, match="holds no angiograms") as caught:
        index_pairs(tmp_path)
    assert caught.value.path == str(tmp_path)
    missing = tmp_path / "nowhere"
    for call in (
        lambda: index_pairs(missing),
        lambda: index_images_masks(missing, tmp_path),
        lambda: index_unlabeled(missing),
    ):
        with pytest.raises(InvalidInputError, match="nowhere.*not found"):
            call()
    (tmp_path / "hollow").mkdir()
    with pytest.raises(InvalidInputError, match="hollow.*no angiograms"):
        index_unlabeled(tmp_path / "hollow")


def test_images_masks_match_by_stem_across_extensions(tmp_path):
    write_png(tmp_path / "images" / "a1.jpg")
    write_png(tmp_path / "images" / "a2.png")
    write_mask(tmp_path / "masks" / "a1.png")
    write_mask(tmp_path / "masks" / "a2.bmp")
    records = index_images_masks(tmp_path / "images", tmp_path / "masks")
    images, masks = tmp_path / "images", tmp_path / "masks"
    assert records == [
        AngiogramRecord("a1", str(images / "a1.jpg"), str(masks / "a1.png")),
        AngiogramRecord("a2", str(images / "a2.png"), str(masks / "a2.bmp")),
    ]
    write_mask(tmp_path / "masks" / "a3.png")
    with pytest.raises(InvalidInputError, match="a3.png.*without an angiogram"):
        index_images_masks(tmp_path / "images", tmp_path / "masks")


def test_two_images_with_one_stem_are_an_error(tmp_path):
    write_png(tmp_path / "1.png")
    write_png(tmp_path / "1.tif")
    write_mask(tmp_path / "1_gt.png")
    with pytest.raises(InvalidInputError, match="shares its stem '1'"):
        index_pairs(tmp_path)


def test_read_pair_size_mismatch_names_both_files(tmp_path):
    write_png(tmp_path / "1.png", size=(8, 8))
    write_mask(tmp_path / "1_gt.png", size=(8, 9))
    (record,) = index_pairs(tmp_path)
    with pytest.raises(InvalidInputError, match="8x8.*8x9") as caught:
        read_pair(record)
    assert "1.png" in str(caught.value) and "1_gt.png" in str(caught.value)


def test_read_pair_needs_a_mask(tmp_path):
    record = AngiogramRecord("1", str(write_png(tmp_path / "1.png")))
    with pytest.raises(InvalidInputError, match="1.png.*no vessel mask"):
        read_pair(record)


def test_validate_records_raises_or_collects(tmp_path):
    for stem in ("1", "2", "3", "4"):
        write_png(tmp_path / f"{stem}.png")
        write_mask(tmp_path / f"{stem}_gt.png")
    truncated = tmp_path / "2.png"
    truncated.write_bytes(truncated.read_bytes()[:30])
    labels = np.zeros((8, 8), np.uint8)
    labels[3, 3], labels[4, 4] = 1, 2  # a multi-label map, not a vessel mask
    write_png(tmp_path / "3_gt.png", labels)
    records = index_pairs(tmp_path)

    with pytest.raises(InvalidInputError, match="2.png"):
        validate_records(records)
    valid, skipped = validate_records(records, skip_invalid=True)
    assert [record.name for record in valid] == ["1", "4"]
    assert [path for path, _ in skipped] == [
        str(tmp_path / "2.png"),
        str(tmp_path / "3_gt.png"),
    ]
    assert "cannot be decoded" in skipped[0][1]
    assert "neither a 0/1 mask" in skipped[1][1]


def test_record_is_frozen():
    record = AngiogramRecord("1", "1.png")
    assert record.mask_path is None and record.frame is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.name = "2"


# --- unlabeled layouts ------------------------------------------------------


def test_index_unlabeled_skips_hidden_masks_and_annotations(tmp_path):
    write_png(tmp_path / "run" / "images" / "a.png")
    write_png(tmp_path / "run" / "b.jpg")
    write_mask(tmp_path / "run" / "masks" / "a.png")
    write_mask(tmp_path / "run" / "Annotations" / "c.png")
    write_png(tmp_path / "run" / ".cache" / "d.png")
    write_png(tmp_path / "run" / ".hidden.png")
    (tmp_path / "run" / "notes.json").write_text("{}")
    records = index_unlabeled(tmp_path / "run")
    assert [record.name for record in records] == ["b", "a"]
    # Not recursive: only the top folder.
    assert [record.name for record in index_unlabeled(tmp_path / "run", False)] == ["b"]
    # A file named explicitly is taken, wherever it lies; duplicates once.
    mask_file = tmp_path / "run" / "masks" / "a.png"
    records = index_unlabeled([mask_file, tmp_path / "run" / "b.jpg", tmp_path / "run"])
    image_names = [Path(record.image_path).name for record in records]
    assert image_names == ["a.png", "b.jpg", "a.png"]
    assert len({record.name for record in records}) == 3


def test_index_unlabeled_on_a_pairs_folder_takes_the_angiograms_not_their_masks(shared_data, tmp_path):
    folder = shared_data / "xca_vessels" / "train"
    records = index_unlabeled(folder)
    assert len(records) == 40 and len(list(folder.glob("*_gt.png"))) == 40
    assert not any(record.name.endswith("_gt") for record in records)
    # A `_gt` file without its angiogram beside it is an angiogram like any other,
    # and a mask named explicitly is taken.
    write_png(tmp_path / "run" / "7_gt.png")
    write_png(tmp_path / "run" / "8.png")
    write_mask(tmp_path / "run" / "8_gt.png")
    assert [record.name for record in index_unlabeled(tmp_path / "run")] == ["7_gt", "8"]
    assert [record.name for record in index_unlabeled(tmp_path / "run" / "8_gt.png")] == ["8_gt"]


def test_index_unlabeled_makes_names_unique(tmp_path):
    write_png(tmp_path / "train" / "images" / "1.png")
    write_png(tmp_path / "val" / "images" / "1.png")
    write_png(tmp_path / "val" / "images" / "2.png")
    write_png(tmp_path / "val" / "images" / "2.tif")
    records = index_unlabeled(tmp_path)
    names = {
        Path(record.image_path).relative_to(tmp_path).as_posix(): record.name
        for record in records
    }
    assert names == {
        "train/images/1.png": "train_images_1",
        "val/images/1.png": "val_images_1",
        "val/images/2.png": "2_png",
        "val/images/2.tif": "2_tif",
    }


def test_index_unlabeled_expands_dicom_cine(tmp_path):
    write_cine(tmp_path / "runs" / "LAO.dcm", 7)
    write_cine(tmp_path / "runs" / "IM0002", 1)  # no suffix: found by preamble
    write_png(tmp_path / "runs" / "still.png")
    records = index_unlabeled(tmp_path / "runs", frame_step=3)
    assert [(record.name, record.frame) for record in records] == [
        ("IM0002", None),
        ("LAO_f0000", 0),
        ("LAO_f0003", 3),
        ("LAO_f0006", 6),
        ("still", None),
    ]
    valid, skipped = validate_records(records)
    assert skipped == [] and len(valid) == 5
    angiogram = readers.read_angiogram(records[2].image_path, records[2].frame)
    np.testing.assert_array_equal(angiogram, np.full((4, 5), 3))
    for step in (0, -1):
        with pytest.raises(ValueError, match="frame_step"):
            index_unlabeled(tmp_path / "runs", frame_step=step)


def test_unreadable_dicom_is_indexed_then_reported(tmp_path):
    write_cine(tmp_path / "broken.dcm", 3, with_pixels=False)
    write_png(tmp_path / "fine.png")
    records = index_unlabeled(tmp_path)
    assert [record.name for record in records] == ["broken", "fine"]
    valid, skipped = validate_records(records, skip_invalid=True)
    assert [record.name for record in valid] == ["fine"]
    assert skipped == [(str(tmp_path / "broken.dcm"), "DICOM file has no pixel data")]


def test_named_file_of_another_type_is_an_error(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(InvalidInputError, match="notes.txt.*not an angiogram"):
        index_unlabeled(notes)


# --- the data stage stays free of TensorFlow ----------------------------------


@pytest.mark.parametrize("module", [readers, layouts])
def test_module_imports_no_tensorflow(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"tensorflow", "keras"}


# --- nnU-Net raw datasets --------------------------------------------------------


def _edit_dataset_json(folder, **changes):
    import json

    dataset = json.loads((folder / "dataset.json").read_text())
    dataset.update(changes)
    (folder / "dataset.json").write_text(json.dumps(dataset))


def test_nnunet_dataset_reads_cases_and_their_label_maps(nnunet_dataset, shared_data):
    from cm_unet_keras.data.layouts import index_nnunet

    records = index_nnunet(nnunet_dataset)
    assert [record.name for record in records] == ["xca_001", "xca_002", "xca_003", "xca_004"]
    angiogram, vessel_mask = read_pair(records[1])
    original = index_pairs(shared_data / "xca_vessels" / "train")[1]  # "2"
    expected_angiogram, expected_mask = read_pair(original)
    np.testing.assert_array_equal(angiogram, expected_angiogram)
    np.testing.assert_array_equal(vessel_mask, expected_mask)
    assert [record.name for record in index_nnunet(nnunet_dataset, "test")] == ["xca_005", "xca_006"]


def test_nnunet_labels_say_which_values_are_vessel(nnunet_dataset):
    from cm_unet_keras.data.layouts import index_nnunet

    label_path = nnunet_dataset / "labelsTr" / "xca_001.png"
    labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    labels[:10, :10] = 2  # a second structure, e.g. the catheter
    cv2.imwrite(str(label_path), labels)
    with pytest.raises(InvalidInputError, match=r"xca_001.png: label values \[2\] are not among"):
        read_pair(index_nnunet(nnunet_dataset)[0])

    _edit_dataset_json(nnunet_dataset, labels={"background": 0, "artery": 1, "catheter": 2})
    every_label = read_pair(index_nnunet(nnunet_dataset)[0])[1]
    arteries = read_pair(index_nnunet(nnunet_dataset, vessel_labels=["artery"])[0])[1]
    assert every_label[:10, :10].all() and not arteries[:10, :10].any()
    np.testing.assert_array_equal(arteries[10:], (labels == 1)[10:])
    with pytest.raises(InvalidInputError, match=r"no label\(s\) \['vein'\]"):
        index_nnunet(nnunet_dataset, vessel_labels=["vein"])


def test_nnunet_file_ending_picks_the_files(nnunet_dataset):
    from cm_unet_keras.data.layouts import index_nnunet

    for folder in ("imagesTr", "labelsTr"):
        for path in (nnunet_dataset / folder).glob("*.png"):
            if "xca_004" not in path.name:
                cv2.imwrite(str(path.with_suffix(".tif")), cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    _edit_dataset_json(nnunet_dataset, file_ending=".tif", numTraining=3)
    records = index_nnunet(nnunet_dataset)
    assert [Path(record.image_path).name for record in records] == [f"xca_00{n}_0000.tif" for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "change, problem",
    [
        (dict(channel_names={"0": "X-ray", "1": "mask"}), "one X-ray channel"),
        (dict(labels={"background": 0, "vessel": 1, "ignore": 2}), "'ignore' label"),
        (dict(labels={"background": 0}), "no foreground label"),
        (dict(numTraining=5), "numTraining is 5 but"),
        (dict(file_ending=".nii.gz"), "must be 2D images"),
    ],
    ids=["two-channels", "ignore-label", "no-foreground", "case-count", "nifti"],
)
def test_unusable_dataset_json_is_refused(change, problem, nnunet_dataset):
    from cm_unet_keras.data.layouts import index_nnunet

    _edit_dataset_json(nnunet_dataset, **change)
    with pytest.raises(InvalidInputError, match="dataset.json") as error:
        index_nnunet(nnunet_dataset)
    assert problem in str(error.value)


def test_nnunet_case_without_its_label_names_the_expected_file(nnunet_dataset):
    from cm_unet_keras.data.layouts import index_nnunet

    (nnunet_dataset / "labelsTr" / "xca_002.png").unlink()
    with pytest.raises(InvalidInputError, match=r"xca_002_0000.png: has no vessel mask: expected .*labelsTr/xca_002.png"):
        index_nnunet(nnunet_dataset)
    (nnunet_dataset / "dataset.json").unlink()
    with pytest.raises(InvalidInputError, match="no dataset.json"):
        index_nnunet(nnunet_dataset)


def test_index_pairs_can_leave_out_angiograms_not_annotated_yet(tmp_path):
    # The folder `cm-unet annotate` fills mask by mask, after `cm-unet select`.
    for stem in ("1", "2", "10"):
        write_png(tmp_path / f"{stem}.png")
    write_mask(tmp_path / "10_gt.png")
    write_png(tmp_path / "contact_sheet.png")
    (tmp_path / "selection.csv").write_text("rank,source,frame,png,score,why\n")
    unlabelled = []
    (record,) = index_pairs(tmp_path, unlabelled=unlabelled)
    assert record.name == "10" and record.mask_path == str(tmp_path / "10_gt.png")
    assert unlabelled == [str(tmp_path / "1.png"), str(tmp_path / "2.png")]
    (tmp_path / "10_gt.png").unlink()
    with pytest.raises(InvalidInputError, match="holds 3 angiograms but none has a '_gt' mask yet"):
        index_pairs(tmp_path, unlabelled=[])
    with pytest.raises(InvalidInputError, match="1.png: has no vessel mask"):  # the default is unchanged
        index_pairs(tmp_path)
