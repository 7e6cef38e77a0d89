"""ARCADE syntax polygons to vessel masks (recipes/import_arcade_syntax.py)."""

import json
import shutil

import cv2
import numpy as np
import pytest

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.polygons import coco_vessel_masks, read_yolo_polygons, yolo_vessel_mask


def test_segments_are_filled_and_stenosis_left_out(tmp_path):
    label = tmp_path / "1.txt"
    # A 40x20 px rectangle (segment 0) and a stenosis box (class 25) on a 100x200 (h x w) image.
    label.write_text("0 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n25 0.6 0.6 0.9 0.6 0.9 0.9 0.6 0.9\n")
    mask = yolo_vessel_mask(label, (100, 200))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    rows, columns = np.nonzero(mask)
    assert (columns.min(), columns.max(), rows.min(), rows.max()) == (20, 60, 10, 30)
    assert not mask[60:, 120:].any()


@pytest.mark.parametrize("line, problem", [
    ("0 0.1 0.1 0.2", "at least 3"), ("x 0.1 0.1 0.2 0.2 0.3 0.3", "not a number"),
    ("0 10 10 20 20 30 30", "fractions"), ("1.5 0.1 0.1 0.2 0.2 0.3 0.3", "non-negative integer"),
])
def test_a_malformed_label_line_is_refused_with_its_file_and_line(tmp_path, line, problem):
    label = tmp_path / "7.txt"
    label.write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n" + line + "\n")
    with pytest.raises(InvalidInputError, match=rf"7\.txt: line 2: .*{problem}"):
        read_yolo_polygons(label)


def _split_from_shared(shared_data, folder, names):
    """A YOLO split of real ARCADE images with polygons traced from their shared masks."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for name in names:
        shutil.copy(shared_data / "arcade_vessels" / "val" / "images" / f"{name}.png", folder / "images")
        mask = cv2.imread(str(shared_data / "arcade_vessels" / "val" / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        lines = [" ".join(["3"] + [f"{x / 512:.6f} {y / 512:.6f}" for x, y in c[:, 0]]) for c in contours if len(c) >= 3]
        (folder / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")


def test_the_recipe_imports_a_split_checks_it_and_keeps_what_exists(shared_data, tmp_path, capsys, recipe_module):
    recipe = recipe_module("import_arcade_syntax")
    split = tmp_path / "val"
    _split_from_shared(shared_data, split, ["1", "2"])
    out = tmp_path / "imported"
    assert recipe.main([str(split), str(out), "--check", str(shared_data / "arcade_vessels" / "val" / "masks")]) in (0, 1)
    printed = capsys.readouterr().out
    assert "2 pairs (YOLO)" in printed and "check:" in printed
    for name in ("1", "2"):
        mask = cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        reference = cv2.imread(str(shared_data / "arcade_vessels" / "val" / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        overlap = 2 * ((mask > 0) & (reference > 0)).sum() / ((mask > 0).sum() + (reference > 0).sum())
        assert overlap > 0.97  # traced outlines, refilled
        assert cv2.imread(str(out / "images" / f"{name}.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    assert "CC BY 4.0" in (out / "SOURCE.md").read_text()
    before = (out / "masks" / "1.png").read_bytes()
    assert recipe.main([str(split), str(out)]) == 2  # not empty: refused, nothing rewritten
    assert "not empty" in capsys.readouterr().err and (out / "masks" / "1.png").read_bytes() == before
    test_split = tmp_path / "test"
    shutil.copytree(split, test_split)
    assert recipe.main([str(test_split), str(tmp_path / "t")]) == 2
    assert "test split" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_coco_annotations_give_the_same_masks_as_yolo(tmp_path):
    polygon = [20, 10, 60, 10, 60, 30, 20, 30]
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": 1, "name": "1"}, {"id": 26, "name": "stenosis"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [polygon]},
                            {"id": 2, "image_id": 1, "category_id": 26, "segmentation": [[0, 0, 5, 0, 5, 5]]}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(coco))
    polygons = coco_vessel_masks(path)
    assert polygons["b.png"] == [] and len(polygons["a.png"]) == 1
    label = tmp_path / "a.txt"
    label.write_text("0 " + " ".join(f"{v / (200 if i % 2 == 0 else 100):.6f}" for i, v in enumerate(polygon)) + "\n")
    from cm_unet_keras.data.polygons import rasterise_polygons
    assert np.array_equal(rasterise_polygons(polygons["a.png"], (100, 200)), yolo_vessel_mask(label, (100, 200)))
    path.write_text("{}")
    with pytest.raises(InvalidInputError, match="not a COCO annotation file"):
        coco_vessel_masks(path)
