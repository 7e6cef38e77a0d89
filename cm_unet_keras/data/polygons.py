"""Vessel masks from segment polygons: ARCADE's SYNTAX annotations.

ARCADE's syntax task (Popov et al., Scientific Data 2024; CC BY 4.0) outlines
each of the 25 SYNTAX coronary segments of an angiogram as a polygon; its
stenosis category is a 26th. Two encodings are in public copies:

- YOLO segmentation: `labels/N.txt` beside `images/N.png`, one polygon a line,
  `CLASS x1 y1 x2 y2 ...` with coordinates in [0, 1] of the image's width and
  height; classes 0-24 are the segments, 25 is stenosis.
- COCO (the Zenodo release): `annotations/*.json` with `images`,
  `annotations` (`segmentation`: flat lists of pixel coordinates) and
  `categories` named "1", "2", ..., "16c", and "stenosis".

A vessel mask is the union of the segment polygons, filled with OpenCV's
`fillPoly` on coordinates rounded to the nearest pixel: the way
`shared/data/arcade_vessels/val/masks` was made (`import_arcade_syntax.py
--check` reproduces those 200 masks to the pixel from the YOLO copy). Side
branches that are not SYNTAX segments are visible but not outlined: the
masks are partial labels (complete main segments).
"""

import json
from pathlib import Path

import cv2
import numpy as np

from cm_unet_keras.core.errors import InvalidInputError

SEGMENT_CLASSES = tuple(range(25))
"""YOLO classes of the 25 SYNTAX segments (class 25 is stenosis)."""

STENOSIS_NAME = "stenosis"


def read_yolo_polygons(label_path):
    """`[(class, points)]` of a YOLO segmentation label file, points as an
    (n, 2) array of (x, y) in [0, 1]. An empty file has no polygon."""
    polygons = []
    text = Path(label_path).read_text()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        problem = _yolo_line_problem(fields)
        if problem:
            raise InvalidInputError(label_path, f"line {number}: {problem}")
        points = np.asarray(fields[1:], dtype=np.float64).reshape(-1, 2)
        polygons.append((int(fields[0]), points))
    return polygons


def _yolo_line_problem(fields):
    try:
        values = [float(value) for value in fields]
    except ValueError:
        return f"not a number in {' '.join(fields[:4])} ..."
    if not values[0].is_integer() or values[0] < 0:
        return f"class {fields[0]} is not a non-negative integer"
    coordinates = values[1:]
    if len(coordinates) < 6 or len(coordinates) % 2:
        return f"a polygon needs at least 3 (x, y) points, got {len(coordinates)} coordinates"
    if min(coordinates) < -0.01 or max(coordinates) > 1.01:
        return "coordinates must be fractions of the image size in [0, 1]"
    return None


def rasterise_polygons(polygons, shape):
    """Fill pixel-coordinate polygons (each (n, 2) of x, y) into a 0/255 mask."""
    mask = np.zeros(shape, np.uint8)
    for points in polygons:
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)
    return mask


def yolo_vessel_mask(label_path, shape, classes=SEGMENT_CLASSES):
    """The union of the polygons of `classes` in a YOLO label file, as a
    0/255 mask of `shape` (height, width)."""
    scale = np.array([shape[1], shape[0]], np.float64)
    polygons = [points * scale for label, points in read_yolo_polygons(label_path) if label in classes]
    return rasterise_polygons(polygons, shape)


def coco_vessel_masks(annotation_path):
    """`{file_name: [polygons]}` of the segment categories (every category
    but stenosis) of an ARCADE COCO annotation file, in pixel coordinates;
    images without a segment map to no polygon."""
    path = Path(annotation_path)
    try:
        coco = json.loads(path.read_text())
        names = {category["id"]: str(category["name"]) for category in coco["categories"]}
        files = {image["id"]: image["file_name"] for image in coco["images"]}
        annotations = coco["annotations"]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(path, f"not a COCO annotation file ({error!r})") from None
    polygons = {name: [] for name in files.values()}
    for annotation in annotations:
        if names.get(annotation.get("category_id"), STENOSIS_NAME) == STENOSIS_NAME:
            continue
        if annotation.get("image_id") not in files:
            raise InvalidInputError(path, f"annotation {annotation.get('id')} names an unknown image")
        for flat in annotation.get("segmentation") or []:
            if len(flat) < 6 or len(flat) % 2:
                raise InvalidInputError(path, f"annotation {annotation.get('id')} has a polygon of "
                                        f"{len(flat)} coordinates")
            polygons[files[annotation["image_id"]]].append(np.asarray(flat, np.float64).reshape(-1, 2))
    return polygons
