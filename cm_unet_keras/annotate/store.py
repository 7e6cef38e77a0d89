"""The annotation folder: frames, their masks, atomic saves with history.

A folder holds angiograms `N.png` (any image type `read_angiogram` reads,
or a single-frame DICOM file) and, once a person has saved one, its mask
`N_gt.png` beside it: 0/255, the angiogram's size. That is the pairs layout
`cm-unet finetune --pairs` reads (`data.layouts.index_pairs`); in a folder
holding `.annotate/` it leaves out the frames not saved yet, where a missing
mask elsewhere is an error. The tool's own files live in `FOLDER/.annotate/`
(hidden: no indexer reads them):

- `history/N/<time>.png`: every earlier version of `N_gt.png`, kept when a
  save replaces it, so that a slip never loses a correction;
- `prefill/`: the model's masks (`prefill.Prefill`).

`annotations.csv` in the folder gets one row per save: when, which frame,
the seconds spent on it, what the edit started from, and the pixels changed.
"""

import csv
import dataclasses
import datetime
import os
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import is_selection_sheet, natural_sort_key
from cm_unet_keras.data.readers import IMAGE_SUFFIXES, count_frames, is_dicom_file, read_angiogram, read_vessel_mask

MASK_SUFFIX = "_gt"
STATE_FOLDER = ".annotate"
LOG_NAME = "annotations.csv"
LOG_FIELDS = ("saved_at", "frame", "seconds", "started_from", "pixels_changed", "pixels_changed_from_model",
              "vessel_pixels")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UnknownFrameError(KeyError):
    """A frame name the folder does not hold (the server answers 404)."""


class MaskError(ValueError):
    """A mask that cannot be saved: not a PNG, the wrong size or values (400)."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One angiogram to annotate.

    Args:
        name: the file's stem, the frame's name in the page and the API.
        image_path: the angiogram.
        mask_path: where its mask is saved, `N_gt.png` beside it.
    """

    name: str
    image_path: Path
    mask_path: Path


def check_frame_name(name):
    """`name` if it can be a frame's name; a `MaskError` otherwise.

    Names are looked up among the folder's frames, never joined to a path,
    so a name like `../x` could not reach outside the folder anyway; it is
    refused outright so that the answer says why.
    """
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\x00"):
        raise MaskError(f"{name!r} is not a frame name (no folders, no leading dot)")
    return name


class AnnotationFolder:
    """The frames of a folder and their masks.

    Args:
        folder: the folder of angiograms (flat: subfolders are not read).

    Attributes:
        frames: {name: `Frame`}, in natural order (1, 2, 10).
        left_out: [(path, why)] of the files that cannot be annotated here
            (a DICOM cine run: `cm-unet select` writes its frames as PNGs).

    Raises:
        InvalidInputError: the folder is missing or holds no angiograms.
    """

    def __init__(self, folder):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise InvalidInputError(self.folder, "folder not found" if not self.folder.exists() else "is not a folder")
        self.state = self.folder / STATE_FOLDER
        self.left_out = []
        self.frames = {}
        for path in sorted(self.folder.iterdir(), key=lambda path: natural_sort_key(path.name)):
            if self._is_frame(path):
                self.frames[path.stem] = Frame(path.stem, path, path.with_name(f"{path.stem}{MASK_SUFFIX}.png"))
        if not self.frames:
            raise InvalidInputError(self.folder, "holds no angiograms to annotate (N.png, or any image "
                                    f"{' '.join(sorted(IMAGE_SUFFIXES))} or single-frame DICOM file)")
        try:  # also the mark `cm-unet finetune --pairs` knows an annotation folder by
            self.state.mkdir(exist_ok=True)
        except OSError as error:
            raise InvalidInputError(self.folder, f"cannot be written ({error.strerror}): the masks are saved "
                                    "beside the frames") from None
        self._locks = {name: threading.Lock() for name in self.frames}
        self._log_lock = threading.Lock()
        self._sizes = {}
        self._clear_stale_writes()

    def _is_frame(self, path):
        if path.name.startswith(".") or not path.is_file() or path.stem.endswith(MASK_SUFFIX):
            return False
        if is_selection_sheet(path):
            return False
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in self.frames:
                self.left_out.append((str(path), f"shares its stem with {self.frames[path.stem].image_path.name}"))
                return False
            return True
        if is_dicom_file(path):
            try:
                frames = count_frames(path)
            except InvalidInputError as error:
                self.left_out.append((str(path), error.problem))
                return False
            if frames == 1:
                return True
            self.left_out.append((str(path), f"a cine run of {frames} frames: write its frames as PNGs with "
                                  "`cm-unet select` and annotate those"))
        return False

    def _clear_stale_writes(self):
        """Delete the temporary files of saves a killed server left behind."""
        for path in self.folder.glob(f".*{MASK_SUFFIX}.png.*.tmp"):
            path.unlink(missing_ok=True)

    def frame(self, name):
        """The `Frame` called `name`; `MaskError` for a malformed name,
        `UnknownFrameError` for one the folder does not hold."""
        check_frame_name(name)
        if name not in self.frames:
            raise UnknownFrameError(f"no frame {name!r} in {self.folder}")
        return self.frames[name]

    def size(self, name):
        """(height, width) of the frame's angiogram, read once."""
        frame = self.frame(name)
        if name not in self._sizes:
            self._sizes[name] = png_size(frame.image_path) or read_angiogram(frame.image_path).shape
        return self._sizes[name]

    def listing(self):
        """[{"name", "width", "height", "saved"}] of every frame, in order."""
        return [{"name": name, "width": self.size(name)[1], "height": self.size(name)[0],
                 "saved": frame.mask_path.is_file()} for name, frame in self.frames.items()]

    def saved_mask(self, name):
        """The frame's saved mask (0/1 uint8), or None before the first save.

        Raises:
            InvalidInputError: `N_gt.png` cannot be read or is not the
                angiogram's size (the message names both).
        """
        frame = self.frame(name)
        if not frame.mask_path.is_file():
            return None
        vessel_mask = read_vessel_mask(frame.mask_path)
        if vessel_mask.shape != self.size(name):
            raise InvalidInputError(frame.mask_path, f"is {_shown(vessel_mask.shape)} but its angiogram "
                                    f"{frame.image_path.name} is {_shown(self.size(name))} (width x height)")
        return vessel_mask

    def history(self, name):
        """The earlier versions of the frame's mask, oldest first."""
        folder = self.state / "history" / self.frame(name).name
        return sorted(folder.glob("*.png")) if folder.is_dir() else []

    def save_mask(self, name, vessel_mask, seconds=None, model_mask=None):
        """Write the frame's `N_gt.png` (0/255) atomically and log the save.

        The earlier `N_gt.png`, if any, is first kept in
        `.annotate/history/N/`. Saves of one frame are serialised, so of two
        racing saves each lands whole and the later one stays.

        Args:
            vessel_mask: 0/1 array of the angiogram's size.
            seconds: time spent on the frame since it was opened or last
                saved, as the page measured it; None if unknown.
            model_mask: the model's pre-fill of the frame (0/1), or None;
                the log counts the pixels changed from it.

        Returns:
            The row appended to `annotations.csv`, as a dict.
        """
        frame = self.frame(name)
        vessel_mask = np.asarray(vessel_mask, np.uint8)
        if vessel_mask.shape != self.size(name):
            raise MaskError(f"mask is {_shown(vessel_mask.shape)} but frame {name} is {_shown(self.size(name))} "
                            "(width x height)")
        with self._locks[name]:
            existed = frame.mask_path.is_file()
            try:
                previous = self.saved_mask(name)
            except InvalidInputError:  # unreadable or the wrong size: kept in history, replaced
                previous = None
            started = previous if existed else model_mask
            if existed:
                self._keep_version(frame)
            write_png_atomic(frame.mask_path, vessel_mask * np.uint8(255))
            row = {
                "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "frame": name,
                "seconds": "" if seconds is None else f"{seconds:.1f}",
                "started_from": "saved" if existed else "model" if model_mask is not None else "empty",
                "pixels_changed": int(np.count_nonzero(vessel_mask != (0 if started is None else started))),
                "pixels_changed_from_model": "" if model_mask is None else int(np.count_nonzero(vessel_mask != model_mask)),
                "vessel_pixels": int(np.count_nonzero(vessel_mask)),
            }
        self._log(row)
        return row

    def _keep_version(self, frame):
        folder = self.state / "history" / frame.name
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        kept = folder / f"{stamp}.png"
        try:  # a second name for the same bytes: instant, and whole or absent
            os.link(frame.mask_path, kept)
        except OSError:  # a file system without hard links
            write_png_atomic(kept, frame.mask_path.read_bytes(), encoded=True)

    def _log(self, row):
        log = self.folder / LOG_NAME
        with self._log_lock:
            new = not log.is_file() or log.stat().st_size == 0
            with open(log, "a", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=LOG_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
                stream.flush()
                os.fsync(stream.fileno())


def decode_mask_png(body, shape, name):
    """The 0/1 mask in a PNG `body` sent for frame `name` of `shape` (H, W).

    The PNG may be grey, or colour with equal channels (what a browser's
    canvas writes), opaque; its values 0/255 or 0/1.

    Raises:
        MaskError: not a PNG, not decodable, transparent, coloured, not
            8-bit, not `shape`, or values other than 0/255 or 0/1.
    """
    import cv2

    if not body.startswith(PNG_SIGNATURE):
        raise MaskError(f"the mask of {name} must be a PNG image; the body is not one")
    pixels = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise MaskError(f"the PNG sent for {name} cannot be decoded")
    if pixels.dtype != np.uint8:
        raise MaskError(f"the mask of {name} is {pixels.dtype}; send an 8-bit PNG (0/255 or 0/1)")
    if pixels.ndim == 3:
        if pixels.shape[2] == 4 and (pixels[..., 3] != 255).any():
            raise MaskError(f"the mask of {name} has transparent pixels; send an opaque PNG")
        colour = pixels[..., :3]
        if (colour != colour[..., :1]).any():
            raise MaskError(f"the mask of {name} is in colour; send grey (0/255 or 0/1)")
        pixels = colour[..., 0]
    if pixels.shape != tuple(shape):
        raise MaskError(f"the mask is {_shown(pixels.shape)} but frame {name} is {_shown(shape)} (width x height)")
    values = set(np.unique(pixels).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        shown = ", ".join(map(str, sorted(values)[:6])) + (", ..." if len(values) > 6 else "")
        raise MaskError(f"the mask of {name} holds values {shown}; a mask holds 0/255 or 0/1")
    return (pixels > 0).astype(np.uint8)


def write_png_atomic(path, pixels, encoded=False):
    """Write `pixels` (or, `encoded`, PNG bytes) to `path` whole or not at all.

    A temporary file beside `path` (hidden, so no indexer reads it) is
    written, flushed to the disk, and renamed over `path`; the folder is
    then synced so that the rename survives a power cut. A reader sees the
    old file or the new one, never part of either.
    """
    import cv2

    path = Path(path)
    if not encoded:
        ok, buffer = cv2.imencode(".png", pixels)
        if not ok:
            raise OSError(f"{path}: the mask could not be encoded as PNG")
        pixels = buffer.tobytes()
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(pixels)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _sync_folder(path.parent)


def _sync_folder(folder):
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable enough
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def png_size(path):
    """(height, width) from a PNG's header, or None if `path` is no PNG.

    Listing a folder of thousands of frames reads 24 bytes of each, not its
    pixels.
    """
    with open(path, "rb") as stream:
        head = stream.read(24)
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def _shown(shape):
    return f"{shape[1]}x{shape[0]}"
