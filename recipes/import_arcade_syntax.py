"""Import ARCADE's syntax task as vessel-mask pairs (main coronary segments).

    python recipes/import_arcade_syntax.py SPLIT_DIR OUT_DIR [--check MASKS_DIR]

ARCADE (Popov et al., "ARCADE: Automatic Region-based Coronary Artery
Disease diagnostics using x-ray angiography imagEs Dataset", Scientific Data
2024; CC BY 4.0, Zenodo record 10390295) outlines the 25 SYNTAX segments of
each angiogram. SPLIT_DIR is one split of it as downloaded: `images/` with
`labels/*.txt` (YOLO segmentation, as in the public copy
`chenho2000/UNet-plus-plus-for-Stenosis-Segmentation`, commit 4588791,
`dataset/syntax/train`) or with `annotations/*.json` (COCO, the Zenodo
release). OUT_DIR receives `images/N.png` (8-bit grey; RGB-stored originals
are written as grey) and `masks/N.png` (0/255, the union of the segment
polygons, stenosis left out), the layout `--images OUT/images --masks
OUT/masks` reads, and `SOURCE.md` naming the source and its licence.

The masks are made the way `shared/data/arcade_vessels/val` was:
`--check ../shared/data/arcade_vessels/val/masks` on the validation split
compares every mask with those, pixel by pixel. Side branches that are not
SYNTAX segments are visible and unlabelled: train with them as partial
labels. A split folder named `test` is refused: the project is scored on
ARCADE's test splits, and nothing may train, tune or select on them.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cm_unet_keras.core.errors import InvalidInputError  # noqa: E402
from cm_unet_keras.data.layouts import natural_sort_key  # noqa: E402
from cm_unet_keras.data.polygons import coco_vessel_masks, rasterise_polygons, yolo_vessel_mask  # noqa: E402

SOURCE_NOTE = """# ARCADE syntax task: main-segment vessel masks

Imported by `python recipes/import_arcade_syntax.py {split} {out}` ({count} pairs, {annotation} annotations).
Images: ARCADE (Popov et al., Scientific Data 2024), syntax task, CC BY 4.0: credit the authors with
anything derived from them, models included. Masks: the union of the 25 SYNTAX segment polygons (stenosis
left out), filled at the nearest pixel; small side branches are visible but not annotated.
"""


def grey_image(path):
    """An 8-bit grey copy of an ARCADE image (some are stored as RGB with equal channels)."""
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InvalidInputError(path, "not a readable image")
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels[..., :3], cv2.COLOR_BGR2GRAY)
    if pixels.dtype != np.uint8:
        raise InvalidInputError(path, f"expected 8-bit pixels, found {pixels.dtype}")
    return pixels


def split_masks(split_dir):
    """`(images, mask_of)`: the split's image files and a function giving the
    vessel mask of an image file from its annotation (YOLO or COCO)."""
    split_dir = Path(split_dir)
    images = sorted((p for p in (split_dir / "images").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")),
                    key=lambda p: natural_sort_key(p.name))
    if not images:
        raise InvalidInputError(split_dir / 'images', "no PNG or JPEG angiogram found")
    labels = split_dir / "labels"
    if labels.is_dir():
        def mask_of(image, shape):
            label = labels / f"{image.stem}.txt"
            if not label.is_file():
                raise InvalidInputError(image, f"no annotation {label}")
            return yolo_vessel_mask(label, shape)
        return images, mask_of, "YOLO"
    coco_files = sorted((split_dir / "annotations").glob("*.json"))
    if len(coco_files) != 1:
        raise InvalidInputError(split_dir, f"expected labels/*.txt (YOLO) or one annotations/*.json (COCO), "
                                f"found {len(coco_files)} JSON files and no labels/ folder")
    polygons = coco_vessel_masks(coco_files[0])

    def mask_of(image, shape):
        if image.name not in polygons:
            raise InvalidInputError(image, f"not in {coco_files[0]}")
        return rasterise_polygons(polygons[image.name], shape)
    return images, mask_of, "COCO"


def import_split(split_dir, out_dir, check_dir=None, log=print):
    """Write the split's grey images and vessel masks under `out_dir`;
    returns the number of pairs and, with `check_dir`, the masks that differ."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    if split_dir.name.lower() == "test":
        raise InvalidInputError(split_dir, "a test split; the project is scored on ARCADE's test splits and "
                                "never trains, tunes or selects on them")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidInputError(out_dir, "not empty; give a new folder (nothing there was changed)")
    images, mask_of, annotation = split_masks(split_dir)
    pairs = [(image, grey_image(image)) for image in images]
    masks = [mask_of(image, pixels.shape) for image, pixels in pairs]
    differ = [image.name for (image, _), mask in zip(pairs, masks) if check_dir and _differs(check_dir, image, mask)]
    for folder in ("images", "masks"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for (image, pixels), mask in zip(pairs, masks):
        cv2.imwrite(str(out_dir / "images" / f"{image.stem}.png"), pixels)
        cv2.imwrite(str(out_dir / "masks" / f"{image.stem}.png"), mask)
    (out_dir / "SOURCE.md").write_text(SOURCE_NOTE.format(split=split_dir, out=out_dir, count=len(pairs),
                                                          annotation=annotation))
    log(f"{out_dir}: {len(pairs)} pairs ({annotation}), vessel share "
        f"{np.mean([(mask > 0).mean() for mask in masks]):.4f}")
    return len(pairs), differ


def _differs(check_dir, image, mask):
    reference = cv2.imread(str(Path(check_dir) / f"{image.stem}.png"), cv2.IMREAD_GRAYSCALE)
    if reference is None:
        raise InvalidInputError(Path(check_dir) / (image.stem + '.png'), "missing or unreadable")
    return bool(((reference >= 128) != (mask >= 128)).any())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split", help="one ARCADE syntax split: images/ + labels/ (YOLO) or annotations/ (COCO)")
    parser.add_argument("out", help="new folder for images/ and masks/")
    parser.add_argument("--check", help="a folder of reference masks of the same split to compare with")
    args = parser.parse_args(argv)
    try:
        count, differ = import_split(args.split, args.out, args.check)
    except InvalidInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        print(f"check: {count - len(differ)} of {count} masks equal to {args.check}"
              + (f"; differ: {', '.join(differ[:10])}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
