"""Decode angiograms and vessel masks from image and DICOM files.

Readers at the bottom of the data stage:

- `read_angiogram` returns one X-ray frame as a float32 (H, W) array in the
  file's raw intensity scale: 0..255 for 8-bit images, 0..65535 for 16-bit
  ones, and the output of the Modality LUT (rescale slope and intercept) for
  DICOM. Normalisation happens later, in one place, so that every source
  reaches the network on the same scale.
- `read_frames` yields the frames of a DICOM cine run one by one from a
  single read of the file (`read_angiogram` per frame would parse the file,
  and walk its compressed frames, again for every frame).
- `read_vessel_mask` returns a uint8 (H, W) array of 0 (background) and
  1 (vessel).

DICOM pixel data may be stored uncompressed or in any compressed transfer
syntax X-ray angiography cines use: JPEG baseline and extended (12-bit),
JPEG Lossless (process 14, SV1), JPEG-LS lossless and near-lossless,
JPEG 2000 and RLE, decoded by the pylibjpeg plugins that are dependencies
of the package. A compressed frame that every pydicom plugin refuses is
decoded by the GDCM library (python-gdcm, `data.gdcm_frames`), frame by
frame, then goes through the same Modality LUT and MONOCHROME1 handling.

Every problem with a file raises `InvalidInputError` naming that file.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np

from cm_unet_keras.core.errors import InvalidInputError

# OpenCV and pydicom are imported where a file is decoded: indexing a
# dataset and `cm-unet --help` do without their start-up time (~1 s).

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
"""Suffixes (lower case) of angiograms and masks decoded with OpenCV."""

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
"""Suffixes of DICOM files; files without a suffix count as DICOM when they
carry the 'DICM' marker after the 128-byte preamble."""

MASK_THRESHOLD = 128
"""An 8-bit mask pixel is vessel when its value is >= 128, so that
soft-edged masks (anti-aliased outlines, JPEG ringing) binarise to the
outline an annotator drew. 16-bit masks are scaled to 8 bits first, which
makes their threshold 32768."""

# Weights of ITU-R BT.601 luma, the ones cv2.cvtColor uses for RGB -> grey.
_LUMA_RED, _LUMA_GREEN, _LUMA_BLUE = 0.299, 0.587, 0.114

_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Elements larger than this (the pixel data) are skipped while the header is
# parsed; the frames are then decoded one at a time from the same open file.
_DICOM_DEFER_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class VesselLabels:
    """Which values of a label map are vessel.

    Args:
        vessel: the values read as vessel.
        declared: every value the dataset declares (background included);
            a label map holding another value is refused.
    """

    vessel: tuple
    declared: tuple


def is_dicom_file(path):
    """Whether `path` names a DICOM file, judged by suffix or preamble.

    A file whose name has no suffix is DICOM when bytes 128..131 hold
    b"DICM" (the DICOM Part 10 marker); scanners often export such names.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as file:
            head = file.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_angiogram_file(path):
    """Whether `path` names a file `read_angiogram` can decode."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path)


def read_angiogram(path, frame=None):
    """Read one X-ray angiogram frame in its raw intensity scale.

    Args:
        path: an image file (see `IMAGE_SUFFIXES`) or a DICOM file.
        frame: for a multi-frame DICOM cine run, the 0-based frame to read;
            required there, since silently reading frame 0 of a run would
            hide a mistake. For single-frame files it must be None or 0.

    Returns:
        float32 array of shape (H, W). Grey images stored as RGB/RGBA (three
        equal colour channels) give one channel; images whose colour channels
        differ are converted with the BT.601 luma weights of `cv2.cvtColor`
        (in float, without its rounding); an alpha channel is ignored;
        palette PNGs are expanded by OpenCV. DICOM goes through the Modality
        LUT (rescale slope and intercept), and MONOCHROME1 is inverted within
        its value range so that vessels are dark, as in MONOCHROME2. A
        multi-page TIFF gives its first page.

    Raises:
        InvalidInputError: the file is missing, empty, not decodable, has
            no pixel data, has unsupported dimensions, holds NaN or infinity,
            or `frame` is out of range.
    """
    path = _check_file(path)
    if is_dicom_file(path):
        ((_, angiogram),) = _read_dicom_frames(path, [frame], frame_needed=True)
        return angiogram
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(path, _unsupported_suffix_problem(path))
    _check_single_frame(path, frame)
    pixels = _decode_image(path)
    return _to_float_grey(path, pixels, "bgr", np.issubdtype(pixels.dtype, np.floating))


def read_frames(path, frames=None):
    """Yield frames of one file, reading the file once.

    A DICOM cine run is opened once: its header is parsed, then the
    requested frames are decoded one at a time as the pixel data is read,
    so that a long run is never held decoded in memory and never re-read.

    Args:
        path: an image file or a DICOM file.
        frames: 0-based frame numbers in increasing order, or None for every
            frame. A single-frame file has the one frame None (0 is accepted).

    Yields:
        `(frame, angiogram)`: the frame number (None for single-frame files)
        and the frame as `read_angiogram` returns it.

    Raises:
        InvalidInputError: as `read_angiogram`; raised when the frame at
            fault is reached (frames before it have been yielded).
    """
    path = _check_file(path)
    if is_dicom_file(path):
        yield from _read_dicom_frames(path, None if frames is None else list(frames), frame_needed=False)
        return
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(path, _unsupported_suffix_problem(path))
    requested = [None] if frames is None else list(frames)
    for frame in requested:
        _check_single_frame(path, frame)
    if requested:
        yield requested[0], read_angiogram(path)


def count_frames(path):
    """Number of frames in `path`: NumberOfFrames for DICOM, else 1."""
    path = _check_file(path)
    if is_dicom_file(path):
        with _open_dicom(path) as stream:
            return _dicom_frame_count(path, _read_dicom_header(path, stream))
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(path, _unsupported_suffix_problem(path))
    return 1


def read_vessel_mask(path, labels=None):
    """Read a binary vessel mask, or the vessel labels of a label map.

    Args:
        path: an 8- or 16-bit image file (see `IMAGE_SUFFIXES`).
        labels: None for a binary mask (below); or a `VesselLabels` (from
            nnU-Net's `dataset.json`): the file is read as integer labels, a
            pixel is vessel when its value is one of `labels.vessel`, and a
            value the dataset does not declare is refused.

    Returns:
        uint8 array of shape (H, W) holding 0 (background) and 1 (vessel).
        A mask holding only 0 and 1 (nnU-Net's and MONAI's label maps) is
        read as it is. Otherwise a pixel is vessel when its value is >=
        `MASK_THRESHOLD` (128); this
        thresholds soft-edged masks, such as xca_vessels/train/29_gt.png, to
        the drawn outline. 16-bit masks are scaled to 8 bits first (vessel
        when >= 32768). In colour masks a pixel is vessel when any colour
        channel reaches the threshold (grey stored as RGB has equal channels,
        so this is one channel); alpha is ignored.

    Raises:
        InvalidInputError: the file is missing, empty or not decodable; is
            neither 8- nor 16-bit; or is neither a 0/1 mask nor one whose
            non-zero pixels reach the threshold (a multi-label map, or a
            mask saved faintly), which would silently give a wrong mask.
    """
    path = _check_file(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(
            path,
            "a vessel mask must be an image file with suffix "
            f"{_suffix_list(IMAGE_SUFFIXES)}",
        )
    mask = _decode_image(path)
    if labels is not None:
        return _vessel_labels(path, mask, labels)
    if mask.dtype == np.uint8:
        threshold = MASK_THRESHOLD
    elif mask.dtype == np.uint16:
        threshold = MASK_THRESHOLD << 8
    else:
        raise InvalidInputError(
            path,
            f"mask pixels are {mask.dtype}; store vessel masks as 8-bit "
            "(0/255) or 16-bit (0/65535) images",
        )
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        mask = mask[..., :3].max(axis=2)
    elif mask.ndim != 2:
        raise InvalidInputError(path, f"unsupported mask shape {mask.shape}")
    peak = int(mask.max())
    if peak == 1:  # a 0/1 label map
        return mask.astype(np.uint8)
    if 0 < peak < threshold:
        values = np.unique(mask)
        shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise InvalidInputError(
            path,
            f"neither a 0/1 mask nor a thresholdable one: values {shown}, none reaching the vessel threshold "
            f"{threshold}; store vessel masks as 0/1, 0/255 (8-bit) or 0/65535 (16-bit)",
        )
    # A bool array viewed as uint8 is already 0/1: no second copy.
    return (mask >= threshold).view(np.uint8)


def _vessel_labels(path, label_map, labels):
    if label_map.dtype not in (np.uint8, np.uint16):
        raise InvalidInputError(path, f"label map pixels are {label_map.dtype}; expected 8- or 16-bit integers")
    if label_map.ndim == 3 and label_map.shape[2] in (3, 4):
        colour = label_map[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise InvalidInputError(path, "a label map must be one channel (its colour channels differ)")
        label_map = colour[..., 0]
    elif label_map.ndim != 2:
        raise InvalidInputError(path, f"unsupported label map shape {label_map.shape}")
    undeclared = sorted(set(np.unique(label_map).tolist()) - set(labels.declared))
    if undeclared:
        raise InvalidInputError(
            path, f"label values {undeclared} are not among the dataset's labels {sorted(labels.declared)}"
        )
    return np.isin(label_map, labels.vessel).view(np.uint8)


def _check_file(path):
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InvalidInputError(path, "file not found") from None
    except OSError as error:
        raise InvalidInputError(path, f"cannot be accessed: {error}") from None
    if not path.is_file():
        raise InvalidInputError(path, "is not a regular file")
    if stat.st_size == 0:
        raise InvalidInputError(path, "file is empty (0 bytes)")
    return path


def _check_single_frame(path, frame):
    if frame is not None and frame != 0:
        raise InvalidInputError(
            path, f"frame {frame} is out of range: the file holds 1 frame"
        )


def _decode_image(path):
    import cv2

    pixels = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InvalidInputError(
            path,
            "cannot be decoded as an image: it is truncated, corrupt, or "
            f"not a {path.suffix} file despite its name",
        )
    return pixels


def _to_float_grey(path, pixels, colour_order, may_be_non_finite):
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        grey = _colour_to_grey(pixels[..., :3], colour_order)
    elif pixels.ndim == 2:
        grey = pixels.astype(np.float32, copy=False)
    else:
        raise InvalidInputError(
            path,
            f"unsupported image shape {pixels.shape}: expected (H, W) grey "
            "or (H, W, 3|4) colour",
        )
    if grey.shape[0] == 0 or grey.shape[1] == 0:
        raise InvalidInputError(path, f"image has no pixels: {grey.shape}")
    if may_be_non_finite and not np.isfinite(grey).all():
        raise InvalidInputError(path, "holds NaN or infinite pixel values")
    return grey


def _colour_to_grey(colour, colour_order):
    first = colour[..., 0]
    if np.array_equal(first, colour[..., 1]) and np.array_equal(
        first, colour[..., 2]
    ):
        return first.astype(np.float32)
    if colour_order == "bgr":
        weights = (_LUMA_BLUE, _LUMA_GREEN, _LUMA_RED)
    else:
        weights = (_LUMA_RED, _LUMA_GREEN, _LUMA_BLUE)
    return colour.astype(np.float32) @ np.asarray(weights, dtype=np.float32)


def _open_dicom(path):
    try:
        return open(path, "rb")
    except OSError as error:
        raise InvalidInputError(path, f"cannot be opened: {error}") from None


def _read_dicom_header(path, stream):
    """Parse a DICOM header from `stream`, leaving the pixel data unread."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(stream, defer_size=_DICOM_DEFER_BYTES)
    except InvalidDicomError:
        pass
    except Exception as error:  # pydicom raises many types on corrupt files
        raise InvalidInputError(
            path, f"cannot be parsed as DICOM: {error}"
        ) from None
    # No 'DICM' marker: old ACR-NEMA style files are still DICOM, so parse
    # without it, and call the file foreign only if no pixel data turns up.
    try:
        stream.seek(0)
        header = pydicom.dcmread(stream, defer_size=_DICOM_DEFER_BYTES, force=True)
    except Exception:  # a forced parse of a non-DICOM file fails anyhow
        header = None
    if header is None or not _has_pixel_data(header):
        raise InvalidInputError(
            path, "not a DICOM file: no 'DICM' marker and no pixel data"
        )
    return header


def _has_pixel_data(header):
    return any(keyword in header for keyword in _DICOM_PIXEL_KEYWORDS)


def _dicom_frame_count(path, header):
    if not _has_pixel_data(header):
        raise InvalidInputError(path, "DICOM file has no pixel data")
    try:
        return int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise InvalidInputError(
            path, f"invalid NumberOfFrames {header.NumberOfFrames!r}"
        ) from None


def _read_dicom_frames(path, frames, frame_needed):
    """Yield `(frame, angiogram)` of a DICOM file, opened and read once.

    `frames` None means all of them; `frame_needed`: a cine run given no
    frame number is an error (`read_angiogram`), not a request for all.
    """
    with _open_dicom(path) as stream:
        header = _read_dicom_header(path, stream)
        count = _dicom_frame_count(path, header)
        if frames is None:
            frames = list(range(count)) if count > 1 else [None]
        for frame in frames:
            _check_frame_number(path, frame, count, frame_needed)
        indices = [frame or 0 for frame in frames]
        if indices != sorted(set(indices)):
            raise ValueError(f"frames must be distinct and in increasing order, got {frames}")
        stream.seek(0)
        from pydicom.pixels import iter_pixels

        decoded = iter_pixels(stream, indices=indices)
        try:
            for position, (frame, index) in enumerate(zip(frames, indices)):
                try:
                    stored = next(decoded)
                except Exception as error:  # codecs and truncated data raise many types
                    refused = error
                    break
                yield frame, _dicom_intensity(path, header, stored, index)
            else:
                return
        finally:
            # pydicom's generator restores the file position when closed:
            # close it while the file is still open.
            decoded.close()
        # pydicom's plugins refused this frame: GDCM decodes it and the rest.
        yield from _gdcm_fallback(path, header, frames[position:], indices[position:], refused)


def _gdcm_fallback(path, header, frames, indices, refused):
    """`(frame, angiogram)` decoded by GDCM (`data.gdcm_frames`), or an
    `InvalidInputError` naming the file, the frame of a cine run and both
    decoders' reasons."""
    from cm_unet_keras.data.gdcm_frames import iter_gdcm_frames

    decoded = iter_gdcm_frames(header, indices)
    for frame, index in zip(frames, indices):
        try:
            stored = next(decoded)
        except Exception as error:  # GdcmDecodeError, or pydicom's frame split on damaged data
            which = "" if frame is None else f"frame {frame}: "
            raise InvalidInputError(
                path, f"{which}DICOM pixel data cannot be decoded: pydicom: {refused}; GDCM: {error}"
            ) from None
        yield frame, _dicom_intensity(path, header, stored, index)


def _check_frame_number(path, frame, count, frame_needed):
    if frame is None and count > 1 and frame_needed:
        raise InvalidInputError(
            path,
            f"is a cine run of {count} frames: pass frame=0..{count - 1} "
            "to pick one",
        )
    if frame is not None and not 0 <= frame < count:
        raise InvalidInputError(
            path,
            f"frame {frame} is out of range: the file holds {count} "
            f"frame{'s' if count > 1 else ''}",
        )


def _dicom_intensity(path, header, stored, frame):
    """One decoded frame through the Modality LUT, as float32 grey."""
    # Only float pixel data can hold NaN or infinity: skip the scan otherwise.
    stored_as_float = np.issubdtype(stored.dtype, np.floating)
    transform = _pixel_value_transform(header, frame)
    if stored.ndim == 3 and stored.shape[2] in (3, 4):
        # Colour DICOM: pydicom returns RGB, which has no Modality LUT.
        return _to_float_grey(path, stored, "rgb", stored_as_float)
    intensity = _apply_modality_lut(stored, transform)
    if header.get("PhotometricInterpretation") == "MONOCHROME1":
        low, high = _modality_range(header, transform, intensity)
        np.subtract(low + high, intensity, out=intensity)
    return _to_float_grey(path, intensity, "rgb", stored_as_float)


def _pixel_value_transform(header, frame):
    """The dataset holding the rescale of `frame`.

    Enhanced (multi-frame) objects keep Rescale Slope/Intercept in the
    per-frame or shared functional groups rather than at the top level.
    """
    if "RescaleSlope" in header or "ModalityLUTSequence" in header:
        return header
    groups = []
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) > (frame or 0):
        groups.append(per_frame[frame or 0])
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        transforms = group.get("PixelValueTransformationSequence")
        if transforms:
            return transforms[0]
    return header


def _apply_modality_lut(stored, transform):
    if "ModalityLUTSequence" in transform:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(stored, transform).astype(np.float32)
    # Same arithmetic as pydicom's rescale, but in float32 and in place:
    # a float64 intermediate would double the memory of a large frame.
    intensity = stored.astype(np.float32)
    slope = float(transform.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(transform.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0:
        intensity *= slope
    if intercept != 0.0:
        intensity += intercept
    return intensity


def _modality_range(header, transform, intensity):
    """Lowest and highest values the Modality LUT can output."""
    bits = header.get("BitsStored")
    if bits is None or "PixelData" not in header:
        # Float pixel data has no stored-value range: use the frame's own.
        return float(np.nanmin(intensity)), float(np.nanmax(intensity))
    if header.get("PixelRepresentation", 0) == 1:
        stored = np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1])
    else:
        stored = np.array([0, (1 << bits) - 1])
    mapped = _apply_modality_lut(stored, transform)
    return float(mapped.min()), float(mapped.max())


def _unsupported_suffix_problem(path):
    return (
        f"unsupported file type {path.suffix or '(no suffix)'!r}: expected "
        f"{_suffix_list(IMAGE_SUFFIXES)} or DICOM "
        f"({_suffix_list(DICOM_SUFFIXES)}, or no suffix with a 'DICM' marker)"
    )


def _suffix_list(suffixes):
    return " ".join(sorted(suffixes))
