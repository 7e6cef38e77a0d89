"""Find angiograms and their vessel masks in the folder layouts datasets use.

Four layouts are indexed, each into a list of `AngiogramRecord`:

- `index_pairs`: image and mask side by side, `N.png` + `N_gt.png`
  (the CIMAT / DCA1 layout of xca_vessels).
- `index_images_masks`: `images/` and `masks/` folders matched by file stem
  (XCAD, ARCADE).
- `index_nnunet`: nnU-Net's raw dataset folder, `imagesTr/CASE_0000.png`
  + `labelsTr/CASE.png` (or `imagesTs`/`labelsTs`), read as its
  `dataset.json` says (file ending, channels, labels).
- `index_unlabeled`: any folders or files of angiograms, for
  self-supervised pretraining; DICOM cine runs expand to one record per frame.

Indexing looks at names only (and DICOM headers, to count frames); pixels
are decoded by `read_pair`, streamed by `iter_angiograms` (a cine run's
frames from one read of its file) or checked up front by `validate_records`.
"""

import collections
import dataclasses
import itertools
import json
import os
import re
from pathlib import Path

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.readers import IMAGE_SUFFIXES
from cm_unet_keras.data.readers import VesselLabels
from cm_unet_keras.data.readers import count_frames
from cm_unet_keras.data.readers import is_angiogram_file
from cm_unet_keras.data.readers import is_dicom_file
from cm_unet_keras.data.readers import read_angiogram
from cm_unet_keras.data.readers import read_frames
from cm_unet_keras.data.readers import read_vessel_mask

NON_ANGIOGRAM_FOLDERS = frozenset({"masks", "annotations"})
"""Folder names `index_unlabeled` does not descend into (compared in lower
case). ARCADE is laid out as split/images, split/masks, split/annotations:
its masks are binary PNGs that must not be taken for angiograms."""


@dataclasses.dataclass(frozen=True)
class AngiogramRecord:
    """One angiogram frame and, when labelled, its vessel mask.

    Args:
        name: unique name of the frame within its index, used for outputs
            (predictions, overlays) and for logs.
        image_path: the angiogram file.
        mask_path: the vessel mask file, or None for unlabeled frames.
        frame: the 0-based frame of a multi-frame DICOM cine run, or None
            for single-frame files.
        mask_labels: None when the mask is a binary vessel mask; for a label
            map (nnU-Net), the `VesselLabels` saying which values are vessel.
        convention: what the mask calls vessel, a name of
            `data.conventions.CONVENTIONS` ("tree_catheter" for CIMAT), or
            None if not stated.
    """

    name: str
    image_path: str
    mask_path: str | None = None
    frame: int | None = None
    mask_labels: VesselLabels | None = None
    convention: str | None = None


def natural_sort_key(text):
    """Sort key that orders digit runs by value: 1, 2, 10 rather than 1, 10, 2."""
    parts = re.split(r"(\d+)", str(text))
    # Splitting on a capture group alternates text and digits, so the
    # tuples compare str with str and int with int.
    return tuple(
        int(part) if index % 2 else part.lower() for index, part in enumerate(parts)
    ), str(text)


def index_pairs(directory, mask_suffix="_gt", skipped=None, unlabelled=None):
    """Index a folder of `N.ext` angiograms with `N<mask_suffix>.ext` masks.

    A file whose stem ends with `mask_suffix` is a mask; any other image or
    DICOM file is an angiogram. The mask's extension may differ from the
    image's. Other files (notes, JSON), hidden files and the contact sheet
    of a `cm-unet select` folder are ignored.

    Args:
        directory: the folder.
        mask_suffix: the stem suffix that marks masks.
        skipped: None to raise on an unmatched image or mask; or a list to
            which `(path, problem)` of each unmatched file is appended, the
            file being left out (`--skip-invalid`).
        unlabelled: None to treat an angiogram without a mask as above; or a
            list to which its path is appended, the angiogram being left
            out: a frame not annotated yet (`cm-unet annotate` writes the
            masks one by one into the folder it serves).

    Returns:
        `AngiogramRecord`s named by image stem, in natural order (1, 2, 10).

    Raises:
        InvalidInputError: the folder is missing or holds no pairs, an
            image has no mask, a mask has no image, or two files share a stem.
    """
    if not mask_suffix:
        raise ValueError("mask_suffix must be a non-empty string, such as '_gt'")
    directory = Path(directory)
    images, masks = {}, {}
    for path in _visible_files(directory):
        is_mask = path.stem.endswith(mask_suffix)
        if is_mask and path.suffix.lower() in IMAGE_SUFFIXES:
            _add_by_stem(masks, path.stem[: -len(mask_suffix)], path)
        elif not is_mask and is_angiogram_file(path) and not is_selection_sheet(path):
            _add_by_stem(images, path.stem, path)
    if unlabelled is not None:
        without = [str(images.pop(stem)) for stem in [stem for stem in images if stem not in masks]]
        unlabelled.extend(without)
        if without and not masks:
            raise InvalidInputError(
                directory, f"holds {len(without)} angiograms but none has a '{mask_suffix}' mask yet"
            )
    if not images and not masks:
        raise InvalidInputError(
            directory, f"holds no angiograms with '{mask_suffix}' masks"
        )
    if skipped is not None:
        _drop_unmatched(images, masks, skipped)
    _check_every_image_has_mask(
        images,
        masks,
        expected_mask=lambda image: image.with_name(
            f"{image.stem}{mask_suffix}{image.suffix}"
        ),
    )
    _check_every_mask_has_image(
        images,
        masks,
        expected_image=lambda stem: directory / f"{stem}.<ext>",
    )
    return _labelled_records(images, masks)


def is_selection_sheet(path):
    """Whether `path` is the contact sheet `cm-unet select` writes beside the
    frames it chose (`contact_sheet.png` next to `selection.csv`): a picture
    of the frames, not a frame."""
    path = Path(path)
    return path.name == "contact_sheet.png" and (path.parent / "selection.csv").is_file()


def index_images_masks(images_dir, masks_dir, skipped=None):
    """Index an images folder and a masks folder matched by file stem.

    `images/1.jpg` pairs with `masks/1.png`: extensions may differ. This is
    the XCAD and ARCADE layout. Hidden files and non-image files are ignored.

    `skipped` works as in `index_pairs`.

    Returns:
        `AngiogramRecord`s named by stem, in natural order.

    Raises:
        InvalidInputError: a folder is missing or empty, an image has no
            mask, a mask has no image, or two files in a folder share a stem.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    images = {}
    for path in _visible_files(images_dir):
        if is_angiogram_file(path):
            _add_by_stem(images, path.stem, path)
    masks = {}
    for path in _visible_files(masks_dir):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            _add_by_stem(masks, path.stem, path)
    if not images:
        raise InvalidInputError(images_dir, "holds no angiograms")
    if not masks:
        raise InvalidInputError(masks_dir, "holds no vessel masks")
    if skipped is not None:
        _drop_unmatched(images, masks, skipped)
    _check_every_image_has_mask(
        images,
        masks,
        expected_mask=lambda image: masks_dir / f"{image.stem}.<ext>",
    )
    _check_every_mask_has_image(
        images,
        masks,
        expected_image=lambda stem: images_dir / f"{stem}.<ext>",
    )
    return _labelled_records(images, masks)


NNUNET_SUBSETS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
"""The labelled parts of an nnU-Net raw dataset (`labelsTs` is the custom
some datasets add for their test cases)."""


def index_nnunet(directory, subset="train", vessel_labels=None, skipped=None):
    """Index an nnU-Net raw dataset: `imagesTr/CASE_0000<ending>` with `labelsTr/CASE<ending>`.

    `dataset.json` is honoured: `file_ending` picks the files, `channel_names`
    must name one channel (an X-ray frame; nnU-Net's RGB PNG convention, three
    channel names and one `_0000` file, is read as grey), and `labels`
    (`{"background": 0, "vessel": 1}`) says which values are vessel. Label
    maps are read as integer labels, not as 0/255 masks.

    Args:
        directory: the dataset folder (`DatasetNNN_Name/`).
        subset: "train" (`imagesTr`, `labelsTr`) or "test" (`imagesTs`,
            `labelsTs`).
        vessel_labels: names of the labels that are vessel; None: every
            label but background (a region given as a list counts all its
            values).
        skipped: as in `index_pairs`.

    Returns:
        `AngiogramRecord`s named by case, in natural order.

    Raises:
        InvalidInputError: `dataset.json` is missing or unusable (no labels,
            an unknown label name, an `ignore` label, several image channels,
            a file ending we cannot read), a case lacks its image or label
            file, or `numTraining` disagrees with `imagesTr`.
    """
    directory = Path(directory)
    if subset not in NNUNET_SUBSETS:
        raise ValueError(f"subset must be one of {sorted(NNUNET_SUBSETS)}, got {subset!r}")
    dataset = _read_dataset_json(directory)
    ending = dataset.get("file_ending", ".png")
    if not str(ending).startswith(".") or Path(f"case{ending}").suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(
            directory / "dataset.json",
            f"file_ending {ending!r}: angiograms must be 2D images ({' '.join(sorted(IMAGE_SUFFIXES))})",
        )
    labels = _nnunet_vessel_labels(directory / "dataset.json", dataset, vessel_labels)
    images_dir, labels_dir = (directory / name for name in NNUNET_SUBSETS[subset])
    images = {}
    for path in _visible_files(images_dir):
        match = re.fullmatch(rf"(.+)_(\d{{4}}){re.escape(ending)}", path.name)
        if match is None:
            continue
        if match.group(2) != "0000":
            raise InvalidInputError(
                path, f"channel {match.group(2)}: this package reads one X-ray channel per case (_0000)"
            )
        _add_by_stem(images, match.group(1), path)
    masks = {}
    for path in _visible_files(labels_dir):
        if path.name.endswith(ending):
            _add_by_stem(masks, path.name[: -len(ending)], path)
    if not images:
        raise InvalidInputError(images_dir, f"holds no CASE_0000{ending} images")
    expected = dataset.get("numTraining")
    if subset == "train" and expected is not None and int(expected) != len(images):
        raise InvalidInputError(
            directory / "dataset.json", f"numTraining is {expected} but {images_dir} holds {len(images)} cases"
        )
    if skipped is not None:
        _drop_unmatched(images, masks, skipped)
    _check_every_image_has_mask(
        images, masks, expected_mask=lambda image: labels_dir / f"{image.name[: -len(ending) - 5]}{ending}"
    )
    _check_every_mask_has_image(images, masks, expected_image=lambda case: images_dir / f"{case}_0000{ending}")
    return [dataclasses.replace(record, mask_labels=labels) for record in _labelled_records(images, masks)]


def _read_dataset_json(directory):
    path = directory / "dataset.json"
    if not directory.is_dir():
        raise InvalidInputError(directory, "folder not found")
    if not path.is_file():
        raise InvalidInputError(directory, "no dataset.json: not an nnU-Net raw dataset folder")
    try:
        dataset = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InvalidInputError(path, f"cannot be read: {error}") from None
    if not isinstance(dataset, dict):
        raise InvalidInputError(path, "must hold a JSON object")
    channels = dataset.get("channel_names", dataset.get("modality", {"0": "X-ray"}))
    if len(channels) != 1 and not (str(dataset.get("file_ending", ".png")).lower() == ".png" and len(channels) == 3):
        raise InvalidInputError(
            path, f"channel_names {channels}: this package segments one X-ray channel"
        )
    return dataset


def _nnunet_vessel_labels(path, dataset, names):
    """`VesselLabels` from dataset.json's `labels` (name -> value or list of values)."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InvalidInputError(path, "has no labels (expected e.g. {\"background\": 0, \"vessel\": 1})")
    if "ignore" in labels:
        raise InvalidInputError(path, "an 'ignore' label (sparse annotation) is not supported: every pixel must be labelled")

    def values(value):
        return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))

    declared = sorted({v for value in labels.values() for v in values(value)})
    if names is None:
        names = [name for name, value in labels.items() if values(value) != (0,)]
    unknown = [name for name in names if name not in labels]
    if unknown:
        raise InvalidInputError(path, f"no label(s) {unknown}; labels: {sorted(labels)}")
    vessel = sorted({v for name in names for v in values(labels[name])} - {0})
    if not vessel:
        raise InvalidInputError(path, f"no foreground label among {labels}")
    return VesselLabels(vessel=tuple(vessel), declared=tuple(declared))


def index_unlabeled(paths, recursive=True, frame_step=1):
    """Index angiograms without masks, for self-supervised pretraining.

    Args:
        paths: one path or a list of paths; each is a folder, searched for
            image and DICOM files, or a single file. In folders, hidden files
            and folders are skipped, and folders named `masks` or
            `annotations` are not entered (ARCADE keeps its stenosis masks
            there, beside `images`), nor is `N_gt.png` beside `N.png` (the
            image/mask pairs layout of `index_pairs`); a file named
            explicitly is always taken.
        recursive: search folders' subfolders too.
        frame_step: take every `frame_step`-th frame of a DICOM cine run
            (neighbouring frames are near duplicates).

    Returns:
        `AngiogramRecord`s with mask_path None, folders in the order given
        and files in natural order within each. A cine run gives one record
        per kept frame, named `<stem>_f0003`. Names are file stems; when two
        files share a stem (ARCADE's train/images/1.png and val/images/1.png)
        their names are prefixed with their folders relative to the folder
        the two share (`train_images_1`, `val_images_1`), and when still
        equal (`1.png` beside `1.tif`) suffixed with the extension (`1_tif`).

    Raises:
        InvalidInputError: a path is missing, a named file is not an
            angiogram type, or a folder holds no angiograms. A DICOM file
            whose frames cannot be counted is kept as one record, so that
            `validate_records` reports it with the other unreadable files.
    """
    if isinstance(frame_step, bool) or not isinstance(frame_step, int):
        raise TypeError(f"frame_step must be an int, got {frame_step!r}")
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files, seen = [], set()
    for path in map(Path, paths):
        for file in _angiogram_files(path, recursive):
            key = os.path.normcase(os.path.abspath(file))
            if key not in seen:
                seen.add(key)
                files.append(file)
    if not files:
        raise InvalidInputError(
            ", ".join(map(str, paths)) or "(no paths)", "no angiograms given"
        )
    records = []
    for file, name in zip(files, _unique_file_names(files)):
        frames = _frame_count_or_one(file)
        if frames == 1:
            records.append(AngiogramRecord(name, str(file)))
            continue
        for frame in range(0, frames, frame_step):
            records.append(
                AngiogramRecord(f"{name}_f{frame:04d}", str(file), None, frame)
            )
    names = _with_counters([record.name for record in records])
    return [
        dataclasses.replace(record, name=name) for record, name in zip(records, names)
    ]


def read_pair(record):
    """Read a labelled record's angiogram and vessel mask.

    Returns:
        (angiogram float32 (H, W), vessel_mask uint8 (H, W) of 0/1); see
        `read_angiogram` and `read_vessel_mask`.

    Raises:
        InvalidInputError: either file is unreadable, the record has no
            mask, or the two sizes differ (the message names both files).
    """
    if record.mask_path is None:
        raise InvalidInputError(record.image_path, "has no vessel mask to read")
    angiogram = read_angiogram(record.image_path, record.frame)
    vessel_mask = read_vessel_mask(record.mask_path, record.mask_labels)
    if angiogram.shape != vessel_mask.shape:
        raise InvalidInputError(
            record.image_path,
            f"angiogram is {_size(angiogram)} but its mask {record.mask_path} "
            f"is {_size(vessel_mask)} (height x width); they must match",
        )
    return angiogram, vessel_mask


def iter_angiograms(records):
    """Yield each record's angiogram, reading each file once.

    Consecutive records of one DICOM cine run (as `index_unlabeled` gives
    them) are decoded frame by frame from a single read of the file.

    Args:
        records: `AngiogramRecord`s; masks are not read.

    Yields:
        `(record, angiogram)`, in the order of `records`; for a record that
        cannot be read, `(record, InvalidInputError)` instead (a cine whose
        frame cannot be decoded gives it for that frame and the ones after).
    """
    for path, group in itertools.groupby(records, key=lambda record: record.image_path):
        group = list(group)
        frames = [record.frame for record in group]
        streamed = len(group) > 1 and None not in frames and frames == sorted(set(frames))
        done = 0
        try:
            if streamed:
                for record, (_, angiogram) in zip(group, read_frames(path, frames)):
                    done += 1
                    yield record, angiogram
            else:
                for record in group:
                    angiogram = read_angiogram(record.image_path, record.frame)
                    done += 1
                    yield record, angiogram
        except InvalidInputError as error:
            if not streamed:  # the others of the group are read on their own
                yield group[done], error
                yield from iter_angiograms(group[done + 1 :])
                continue
            for record in group[done:]:
                yield record, error


def validate_records(records, skip_invalid=False):
    """Read every record once, to find broken files before training starts.

    Pixels are decoded in full rather than judged from headers: a truncated
    PNG or DICOM has an intact header and fails only when decoded. Labelled
    records are read with `read_pair`, so size mismatches are caught too;
    unlabeled ones with `iter_angiograms` (a cine run is read once).

    Args:
        records: `AngiogramRecord`s from an index function.
        skip_invalid: collect problems and carry on, instead of raising the
            first one.

    Returns:
        (valid_records, skipped), where skipped lists (path, problem) of each
        record left out, in order.

    Raises:
        InvalidInputError: the first problem, unless skip_invalid.
    """
    records = list(records)
    unlabeled = iter_angiograms([record for record in records if record.mask_path is None])
    valid, skipped = [], []
    for record in records:
        try:
            if record.mask_path is None:
                result = next(unlabeled)[1]
                if isinstance(result, InvalidInputError):
                    raise result
            else:
                read_pair(record)
        except InvalidInputError as error:
            if not skip_invalid:
                raise
            skipped.append((error.path, error.problem))
        else:
            valid.append(record)
    return valid, skipped


def _size(array):
    return f"{array.shape[0]}x{array.shape[1]}"


def _visible_files(directory):
    if not directory.exists():
        raise InvalidInputError(directory, "folder not found")
    if not directory.is_dir():
        raise InvalidInputError(directory, "is not a folder")
    files = [
        entry
        for entry in directory.iterdir()
        if not entry.name.startswith(".") and entry.is_file()
    ]
    return sorted(files, key=lambda path: natural_sort_key(path.name))


def _add_by_stem(by_stem, stem, path):
    if stem in by_stem:
        raise InvalidInputError(
            path, f"shares its stem '{stem}' with {by_stem[stem]}; keep one of them"
        )
    by_stem[stem] = path


def _drop_unmatched(images, masks, skipped):
    """Move unmatched images and masks out of the index, into `skipped`."""
    for stem in [stem for stem in images if stem not in masks]:
        skipped.append((str(images.pop(stem)), "has no vessel mask"))
    for stem in [stem for stem in masks if stem not in images]:
        skipped.append((str(masks.pop(stem)), "vessel mask without an angiogram"))


def _check_every_image_has_mask(images, masks, expected_mask):
    unmatched = [stem for stem in images if stem not in masks]
    if unmatched:
        image = images[unmatched[0]]
        raise InvalidInputError(
            image,
            f"has no vessel mask: expected {expected_mask(image)}"
            + _and_more(len(unmatched) - 1, "image", "lacks a mask"),
        )


def _check_every_mask_has_image(images, masks, expected_image):
    unmatched = [stem for stem in masks if stem not in images]
    if unmatched:
        raise InvalidInputError(
            masks[unmatched[0]],
            f"vessel mask without an angiogram: expected "
            f"{expected_image(unmatched[0])}"
            + _and_more(len(unmatched) - 1, "mask", "lacks an angiogram"),
        )


def _and_more(count, noun, verb_phrase):
    if count == 0:
        return ""
    return f" ({count} more {noun}{'s' if count > 1 else ''} {verb_phrase})"


def _labelled_records(images, masks):
    stems = sorted(images, key=natural_sort_key)
    return [
        AngiogramRecord(stem, str(images[stem]), str(masks[stem])) for stem in stems
    ]


def _angiogram_files(path, recursive):
    if not path.exists():
        raise InvalidInputError(path, "not found")
    if path.is_file():
        if not is_angiogram_file(path):
            raise InvalidInputError(
                path,
                f"not an angiogram file: expected {' '.join(sorted(IMAGE_SUFFIXES))} "
                "or DICOM",
            )
        return [path]
    found = []
    for folder, subfolders, names in os.walk(path):
        # Pruning in place stops os.walk from entering these folders.
        subfolders[:] = (
            [
                name
                for name in subfolders
                if not name.startswith(".")
                and name.lower() not in NON_ANGIOGRAM_FOLDERS
            ]
            if recursive
            else []
        )
        for name in names:
            file = Path(folder, name)
            if not name.startswith(".") and is_angiogram_file(file):
                found.append(file)
    found = _without_paired_masks(found)
    if not found:
        raise InvalidInputError(
            path,
            "folder holds no angiograms"
            + (" (masks/ and annotations/ are not searched)" if recursive else ""),
        )
    return sorted(
        found, key=lambda file: natural_sort_key(file.relative_to(path).as_posix())
    )


PAIRED_MASK_SUFFIX = "_gt"
"""`index_pairs`' default mask suffix: in a folder walk, `N_gt.png` beside
`N.png` is that angiogram's mask (the CIMAT/DCA1 layout), not an angiogram."""


def _without_paired_masks(files):
    """`files` less each `<stem>_gt.<ext>` that has a `<stem>.<ext>` angiogram
    in the same folder, so that `predict`, `select` and `pretrain` on a
    folder of image/mask pairs take the angiograms only."""
    stems = {(file.parent, file.stem) for file in files}
    return [file for file in files if not (file.stem.endswith(PAIRED_MASK_SUFFIX) and
                                           (file.parent, file.stem[: -len(PAIRED_MASK_SUFFIX)]) in stems)]


def _frame_count_or_one(file):
    if not is_dicom_file(file):
        return 1
    try:
        return count_frames(file)
    except InvalidInputError:
        return 1


def _unique_file_names(files):
    """Stems, made unique by relative folder, then extension, then counter."""
    names = [file.stem for file in files]
    for disambiguate in (_prefix_relative_folder, _suffix_extension):
        for indices in _duplicate_groups(names):
            group = [files[index] for index in indices]
            renamed = disambiguate(group, [names[index] for index in indices])
            for index, name in zip(indices, renamed):
                names[index] = name
    return _with_counters(names)


def _duplicate_groups(names):
    groups = collections.defaultdict(list)
    for index, name in enumerate(names):
        groups[name].append(index)
    return [indices for indices in groups.values() if len(indices) > 1]


def _prefix_relative_folder(files, names):
    folders = [Path(os.path.abspath(file.parent)) for file in files]
    shared = Path(os.path.commonpath(folders))
    prefixed = []
    for folder, name in zip(folders, names):
        parts = folder.relative_to(shared).parts
        prefixed.append("_".join((*parts, name)))
    return prefixed


def _suffix_extension(files, names):
    return [
        f"{name}_{file.suffix.lstrip('.')}" if file.suffix else name
        for file, name in zip(files, names)
    ]


def _with_counters(names):
    """Append _2, _3... to repeats; a last resort that keeps names unique."""
    taken = set(names)
    seen = set()
    unique = []
    for name in names:
        if name in seen:
            counter = 2
            while f"{name}_{counter}" in taken:
                counter += 1
            name = f"{name}_{counter}"
            taken.add(name)
        seen.add(name)
        unique.append(name)
    return unique
