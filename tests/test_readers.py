"""Tests for cm_unet_keras.data.readers, on real and generated files."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset

from cm_unet_keras.data.cine import xa_dataset
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.readers import count_frames
from cm_unet_keras.data.readers import is_dicom_file
from cm_unet_keras.data.readers import read_angiogram
from cm_unet_keras.data.readers import read_vessel_mask

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"


def write_dicom(
    path, frames, photometric="MONOCHROME2", bits_stored=12, pixel_data=True, **elements
):
    """Write uint16 `frames`, (H, W) or (N, H, W), as an XA DICOM file."""
    ds = xa_dataset(*frames.shape[-2:], frames.shape[0] if frames.ndim == 3 else None, bits_stored, photometric)
    ds.BitsAllocated = 16
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if pixel_data:
        ds.PixelData = frames.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_palette_png(path, indices, palette):
    """Write a colour-type-3 (palette) PNG by hand: cv2 cannot write one."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    height, width = indices.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    rows = b"".join(b"\x00" + row.tobytes() for row in indices.astype(np.uint8))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", palette.astype(np.uint8).tobytes())
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def stored_frames(count, height=6, width=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 4096, size=(count, height, width), dtype=np.uint16)


# --- the real shared data ---------------------------------------------------


def test_xca_vessels_angiogram_is_300x300_8bit_grey(shared_data):
    path = shared_data / "xca_vessels" / "train" / "1.png"
    angiogram = read_angiogram(path)
    assert angiogram.dtype == np.float32
    assert angiogram.shape == (300, 300)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(angiogram, raw)
    assert count_frames(path) == 1


def test_soft_edged_mask_is_thresholded_at_128(shared_data):
    path = shared_data / "xca_vessels" / "train" / "29_gt.png"
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) - {0, 255}, "29_gt.png should have soft edges"
    vessel_mask = read_vessel_mask(path)
    assert vessel_mask.dtype == np.uint8
    assert vessel_mask.shape == (300, 300)
    assert set(np.unique(vessel_mask)) <= {0, 1}
    np.testing.assert_array_equal(vessel_mask, raw >= 128)
    # Coronary trees cover a few to a few tens of percent of the image.
    assert 0.03 < vessel_mask.mean() < 0.3


def test_arcade_rgb_stored_angiogram_becomes_channel_0(shared_data):
    path = shared_data / "arcade_stenosis" / "train" / "images" / "1.png"
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (512, 512, 3)
    angiogram = read_angiogram(path)
    assert angiogram.shape == (512, 512)
    np.testing.assert_array_equal(angiogram, raw[..., 0])


# --- generated image files --------------------------------------------------


def test_16bit_png_keeps_full_range(tmp_path):
    pixels = np.array([[0, 1, 255], [256, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), pixels)
    angiogram = read_angiogram(path)
    assert angiogram.dtype == np.float32
    np.testing.assert_array_equal(angiogram, pixels)
    assert angiogram.max() == 65535


def test_16bit_tiff_keeps_full_range(tmp_path):
    pixels = np.arange(0, 65536, 4096, dtype=np.uint16).reshape(4, 4)
    pixels[-1, -1] = 65535
    path = tmp_path / "deep.tif"
    assert cv2.imwrite(str(path), pixels)
    np.testing.assert_array_equal(read_angiogram(path), pixels)


def test_rgba_grey_gives_one_channel_and_ignores_alpha(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    alpha = np.full_like(grey, 7)
    path = tmp_path / "grey_rgba.png"
    assert cv2.imwrite(str(path), np.dstack([grey, grey, grey, alpha]))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (4, 5, 4)
    np.testing.assert_array_equal(read_angiogram(path), grey)


def test_colour_image_uses_luminance_weights(tmp_path):
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    path = tmp_path / "colour.png"
    assert cv2.imwrite(str(path), bgr)
    angiogram = read_angiogram(path)
    expected = 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]
    np.testing.assert_allclose(angiogram, expected, atol=1e-3)
    # cv2's own conversion rounds to integers: within half a grey level.
    cv2_grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert np.abs(angiogram - cv2_grey).max() <= 0.5 + 1e-3


def test_palette_png_is_expanded_through_its_palette(tmp_path):
    indices = np.arange(12, dtype=np.uint8).reshape(3, 4)
    grey_levels = 255 - np.arange(256)  # index i shows grey 255 - i
    palette = np.repeat(grey_levels[:, None], 3, axis=1)
    path = write_palette_png(tmp_path / "palette.png", indices, palette)
    np.testing.assert_array_equal(read_angiogram(path), 255 - indices)


def test_float_tiff_is_read_and_nan_is_rejected(tmp_path):
    finite = np.linspace(-1.5, 2.5, 12, dtype=np.float32).reshape(3, 4)
    good = tmp_path / "float.tiff"
    assert cv2.imwrite(str(good), finite)
    np.testing.assert_array_equal(read_angiogram(good), finite)

    for value, name in [(np.nan, "nan.tiff"), (np.inf, "inf.tiff")]:
        broken = finite.copy()
        broken[1, 2] = value
        assert cv2.imwrite(str(tmp_path / name), broken)
        with pytest.raises(InvalidInputError, match=f"{name}.*(NaN|infinite)"):
            read_angiogram(tmp_path / name)


def _truncated_png(tmp_path):
    path = tmp_path / "truncated.png"
    assert cv2.imwrite(str(path), np.arange(400, dtype=np.uint16).reshape(20, 20))
    path.write_bytes(path.read_bytes()[:-40])
    return path


def _zero_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    return path


def _text_as_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an angiogram\n")
    return path


def _missing(tmp_path):
    return tmp_path / "missing.png"


@pytest.mark.parametrize(
    "make_file, problem",
    [
        (_truncated_png, "cannot be decoded"),
        (_zero_bytes, "empty"),
        (_text_as_png, "cannot be decoded"),
        (_missing, "not found"),
    ],
)
@pytest.mark.parametrize("reader", [read_angiogram, read_vessel_mask])
def test_broken_files_raise_naming_the_file(tmp_path, make_file, problem, reader):
    path = make_file(tmp_path)
    with pytest.raises(InvalidInputError, match=problem) as caught:
        reader(path)
    assert path.name in str(caught.value)
    assert caught.value.path == str(path)
    assert isinstance(caught.value, ValueError)


def test_unsupported_suffix_and_frame_of_a_still_image(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(InvalidInputError, match="notes.txt.*unsupported file type"):
        read_angiogram(notes)
    still = tmp_path / "still.png"
    assert cv2.imwrite(str(still), np.zeros((3, 3), np.uint8))
    assert read_angiogram(still, frame=0).shape == (3, 3)
    with pytest.raises(InvalidInputError, match="still.png.*frame 1 is out of range"):
        read_angiogram(still, frame=1)


# --- vessel masks -----------------------------------------------------------


def test_mask_0_255_and_rgb_mask(tmp_path):
    mask = np.zeros((5, 6), np.uint8)
    mask[1:3, 2:5] = 255
    mask[4, 0] = 127  # just below the threshold: background
    mask[4, 1] = 128  # at the threshold: vessel
    grey_path = tmp_path / "m.png"
    rgb_path = tmp_path / "m_rgb.png"
    assert cv2.imwrite(str(grey_path), mask)
    assert cv2.imwrite(str(rgb_path), np.dstack([mask] * 3))
    expected = (mask >= 128).astype(np.uint8)
    for path in (grey_path, rgb_path):
        vessel_mask = read_vessel_mask(path)
        assert vessel_mask.dtype == np.uint8
        assert vessel_mask.shape == (5, 6)
        np.testing.assert_array_equal(vessel_mask, expected)


def test_16bit_mask_is_scaled_to_8bit_before_thresholding(tmp_path):
    mask = np.array([[0, 32767, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "m16.png"
    assert cv2.imwrite(str(path), mask)
    np.testing.assert_array_equal(read_vessel_mask(path), [[0, 0, 1, 1]])


def test_empty_mask_is_allowed(tmp_path):
    path = tmp_path / "none.png"
    assert cv2.imwrite(str(path), np.zeros((4, 4), np.uint8))
    np.testing.assert_array_equal(read_vessel_mask(path), np.zeros((4, 4)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_0_1_mask_is_read_as_it_is(tmp_path, dtype):
    mask = np.zeros((4, 4), dtype)
    mask[1:3, 1:3] = 1
    path = tmp_path / "zero_one.png"
    assert cv2.imwrite(str(path), mask)
    np.testing.assert_array_equal(read_vessel_mask(path), mask.astype(np.uint8))


def test_multi_label_map_is_rejected(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1], mask[2, 2] = 1, 2  # nnU-Net-style labels 0/1/2: not a binary vessel mask
    path = tmp_path / "labels.png"
    assert cv2.imwrite(str(path), mask)
    with pytest.raises(InvalidInputError, match="labels.png.*neither a 0/1 mask.*0, 1, 2"):
        read_vessel_mask(path)


def test_mask_below_threshold_is_rejected(tmp_path):
    mask = np.zeros((4, 4), np.uint16)
    mask[0, 0] = 255  # an 8-bit 0/255 mask saved as 16-bit
    path = tmp_path / "faint.png"
    assert cv2.imwrite(str(path), mask)
    with pytest.raises(InvalidInputError, match="faint.png.*values 0, 255, none reaching the vessel threshold 32768"):
        read_vessel_mask(path)


def test_float_mask_is_rejected(tmp_path):
    path = tmp_path / "prob.tiff"
    assert cv2.imwrite(str(path), np.ones((3, 3), np.float32))
    with pytest.raises(InvalidInputError, match="prob.tiff.*8-bit"):
        read_vessel_mask(path)


# --- DICOM ------------------------------------------------------------------


def test_dicom_single_frame_applies_rescale(tmp_path):
    stored = stored_frames(1)[0]
    path = write_dicom(
        tmp_path / "still.dcm", stored, RescaleSlope=2, RescaleIntercept=-100
    )
    assert count_frames(path) == 1
    angiogram = read_angiogram(path)
    assert angiogram.dtype == np.float32
    assert angiogram.shape == stored.shape
    np.testing.assert_allclose(angiogram, stored * 2.0 - 100.0)


def test_dicom_cine_reads_each_frame(tmp_path):
    stored = stored_frames(3)
    path = write_dicom(tmp_path / "run.dcm", stored)
    assert count_frames(path) == 3
    for frame in range(3):
        np.testing.assert_array_equal(read_angiogram(path, frame=frame), stored[frame])
    for frame in (3, -1):
        with pytest.raises(InvalidInputError, match=f"run.dcm.*frame {frame} is out"):
            read_angiogram(path, frame=frame)
    with pytest.raises(InvalidInputError, match="run.dcm.*3 frames.*frame="):
        read_angiogram(path)


def test_dicom_without_suffix_is_found_by_its_preamble(tmp_path):
    stored = stored_frames(2)
    path = write_dicom(tmp_path / "IM0001", stored)
    assert is_dicom_file(path)
    assert count_frames(path) == 2
    np.testing.assert_array_equal(read_angiogram(path, frame=1), stored[1])
    text = tmp_path / "README"
    text.write_text("x" * 200)
    assert not is_dicom_file(text)


def test_monochrome1_is_inverted_within_its_range(tmp_path):
    stored = stored_frames(1)[0]
    plain = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_angiogram(plain), 4095 - stored.astype(float))
    # With a rescale the range is [intercept, 4095 * slope + intercept].
    rescaled = write_dicom(
        tmp_path / "m1_rescaled.dcm",
        stored,
        photometric="MONOCHROME1",
        RescaleSlope=0.5,
        RescaleIntercept=10,
    )
    low, high = 10.0, 4095 * 0.5 + 10.0
    expected = low + high - (stored * 0.5 + 10.0)
    np.testing.assert_allclose(read_angiogram(rescaled), expected, atol=1e-3)
    # Dark stays dark relative to MONOCHROME2: the order of pixels reverses.
    m2 = read_angiogram(write_dicom(tmp_path / "m2.dcm", stored))
    assert np.corrcoef(m2.ravel(), read_angiogram(plain).ravel())[0, 1] < -0.99


def test_dicom_without_pixel_data_is_rejected(tmp_path):
    path = write_dicom(
        tmp_path / "header_only.dcm", stored_frames(1)[0], pixel_data=False
    )
    for call in (read_angiogram, count_frames):
        with pytest.raises(InvalidInputError, match="header_only.dcm.*no pixel data"):
            call(path)


def test_dicom_with_unsupported_samples_is_rejected(tmp_path):
    path = write_dicom(tmp_path / "two_samples.dcm", stored_frames(1)[0])
    raw = path.read_bytes()
    # SamplesPerPixel (0028,0002) US 1 -> 2: pixels no DICOM reader decodes.
    marker = b"\x28\x00\x02\x00US\x02\x00\x01\x00"
    assert marker in raw
    path.write_bytes(raw.replace(marker, marker[:-2] + b"\x02\x00"))
    with pytest.raises(InvalidInputError, match="two_samples.dcm"):
        read_angiogram(path)


def test_text_file_named_dcm_is_rejected(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_text("just text, no DICOM here\n" * 10)
    with pytest.raises(InvalidInputError, match="fake.dcm"):
        read_angiogram(path)


def test_dicom_modality_lut_sequence_is_applied(tmp_path):
    lut = Dataset()
    # LUT Descriptor and LUT Data have ambiguous VRs: state them.
    lut.add_new(0x00283002, "US", [4096, 0, 16])
    lut.add_new(0x00283006, "US", list(range(0, 2 * 4096, 2)))
    lut.ModalityLUTType = "US"
    stored = stored_frames(1)[0]
    path = write_dicom(tmp_path / "lut.dcm", stored, ModalityLUTSequence=[lut])
    np.testing.assert_array_equal(read_angiogram(path), stored * 2.0)


def test_enhanced_dicom_rescale_from_functional_groups(tmp_path):
    transform = Dataset()
    transform.RescaleSlope = 3
    transform.RescaleIntercept = 1
    transform.RescaleType = "US"
    shared_group = Dataset()
    shared_group.PixelValueTransformationSequence = [transform]
    stored = stored_frames(2)
    path = write_dicom(
        tmp_path / "enhanced.dcm", stored, SharedFunctionalGroupsSequence=[shared_group]
    )
    np.testing.assert_allclose(read_angiogram(path, frame=1), stored[1] * 3.0 + 1)


def test_cine_run_with_one_frame_reads_as_one_image(tmp_path):
    stored = stored_frames(1)
    path = write_dicom(tmp_path / "one.dcm", stored)  # NumberOfFrames = 1
    assert count_frames(path) == 1
    image = read_angiogram(path)
    assert image.shape == stored.shape[1:]
    np.testing.assert_array_equal(image, stored[0].astype(np.float32))


# --- compressed DICOM (pydicom's own test files) --------------------------------


def _pydicom_file(name):
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
    ids=["rle", "jpeg-ls-lossless", "jpeg2000-lossless"],
)
def test_lossless_compressed_dicom_equals_the_uncompressed_file(name):
    np.testing.assert_array_equal(read_angiogram(_pydicom_file(name)), read_angiogram(_pydicom_file("MR_small.dcm")))


def test_jpeg_lossless_sv1_dicom_equals_its_rle_copy():
    # Process 14, selection value 1: the syntax many XA cines are stored in.
    jpeg = read_angiogram(_pydicom_file("SC_rgb_jpeg_gdcm.dcm"))
    np.testing.assert_array_equal(jpeg, read_angiogram(_pydicom_file("SC_rgb_rle.dcm")))


def test_jpeg_extended_12_bit_dicom_decodes_to_pydicoms_reference_values():
    angiogram = read_angiogram(_pydicom_file("JPGExtended.dcm"))
    assert angiogram.shape == (1024, 256)
    assert angiogram[420, 140] == 244 and angiogram[230, 120] == 95


def test_jpeg_ls_near_lossless_dicom_decodes_to_pydicoms_reference_values():
    angiogram = read_angiogram(_pydicom_file("JPEGLSNearLossless_16.dcm"))
    assert [angiogram[row, 0] for row in (0, 5, 10, 40)] == [65535, 32765, 16385, 5]


def _cine_frames(shared_data, count=4, size=64):
    """Crops of real CIMAT angiograms, one per frame."""
    frames = [
        cv2.imread(str(shared_data / "xca_vessels" / "train" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)[100 : 100 + size, 80 : 80 + size]
        for n in range(1, count + 1)
    ]
    return np.stack(frames)


@pytest.mark.parametrize("syntax_name", ["RLELossless", "JPEG2000Lossless"])
def test_losslessly_compressed_cine_streams_every_frame_exactly(syntax_name, shared_data, tmp_path, xa_cine_writer):
    import pydicom.uid

    from cm_unet_keras.data.readers import read_frames

    syntax = getattr(pydicom.uid, syntax_name)
    frames = _cine_frames(shared_data)
    path = xa_cine_writer(tmp_path / "cine.dcm", frames, syntax)
    assert count_frames(path) == 4
    streamed = list(read_frames(path))
    assert [frame for frame, _ in streamed] == [0, 1, 2, 3]
    for (_, angiogram), stored in zip(streamed, frames):
        np.testing.assert_array_equal(angiogram, stored)
    np.testing.assert_array_equal(read_angiogram(path, frame=2), frames[2])
    assert [frame for frame, _ in read_frames(path, [1, 3])] == [1, 3]


def test_jpeg_baseline_cine_decodes_each_frame_as_its_jpeg(shared_data, tmp_path, xa_cine_writer):
    from pydicom.uid import JPEGBaseline8Bit

    from cm_unet_keras.data.readers import read_frames

    frames = _cine_frames(shared_data)
    encoded = [cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for frame in frames]
    path = xa_cine_writer(tmp_path / "cine.dcm", frames, JPEGBaseline8Bit, encoded)
    for (_, angiogram), jpeg in zip(read_frames(path), encoded):
        expected = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.abs(angiogram - expected).max() <= 2  # two IDCT implementations


def test_frames_of_a_compressed_cine_are_read_from_one_open_of_the_file(shared_data, tmp_path, monkeypatch, xa_cine_writer):
    import builtins

    from pydicom.uid import RLELossless

    from cm_unet_keras.data.layouts import index_unlabeled, validate_records

    frames = _cine_frames(shared_data, count=6)
    path = xa_cine_writer(tmp_path / "cine.dcm", frames, RLELossless)
    records = index_unlabeled(path)
    assert len(records) == 6
    opened, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file) == str(path):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    valid, skipped = validate_records(records)
    assert len(valid) == 6 and skipped == []
    assert len(opened) == 1, f"{len(opened)} opens for 6 frames"


# --- what pydicom's plugins refuse and GDCM decodes ------------------------------


def _gdcm_image_reader_pixels(path):
    """The stored pixels of a single-frame file as `gdcm.ImageReader` decodes
    it (the whole file at once): a second path through GDCM, independent of
    the reader's frame-by-frame one."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    image = reader.GetImage()
    columns, rows = image.GetDimension(0), image.GetDimension(1)
    assert image.GetPixelFormat().GetScalarTypeAsString() == "UINT16"
    data = image.GetBuffer().encode("utf-8", "surrogateescape")
    return np.frombuffer(data, "<u2").reshape(rows, columns)


def _jpeg_lossy(tmp_path, name="lossy.dcm", frames=None, **elements):
    """pydicom's JPEG-lossy.dcm (JPEG extended 12-bit whose scan header
    pylibjpeg refuses), rewritten with `frames` (encapsulated fragments,
    default its own one) and `elements`."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    dataset = pydicom.dcmread(_pydicom_file("JPEG-lossy.dcm"))
    (fragment,) = generate_frames(dataset.PixelData, number_of_frames=1)
    frames = [fragment] if frames is None else [fragment if frame is None else frame for frame in frames]
    if len(frames) > 1:
        dataset.NumberOfFrames = len(frames)
    dataset.PixelData = encapsulate(frames)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.save_as(tmp_path / name)
    return tmp_path / name


def test_jpeg_lossy_that_pydicoms_plugins_refuse_is_decoded_by_gdcm(capfd):
    import pydicom

    path = _pydicom_file("JPEG-lossy.dcm")
    with pytest.raises(Exception, match="scan start must be zero"):  # the fallback is what reads it
        pydicom.dcmread(path).pixel_array
    capfd.readouterr()
    angiogram = read_angiogram(path)
    # GDCM's libjpeg messages (its 8-bit codec refusing 12-bit data before
    # the 12-bit one decodes it) are held back on a frame that decodes.
    assert "JPEG" not in capfd.readouterr().err
    reference = _gdcm_image_reader_pixels(path)
    assert reference.shape == (1024, 256) and reference.dtype == np.uint16
    assert angiogram.shape == (1024, 256) and angiogram.dtype == np.float32
    np.testing.assert_array_equal(angiogram, reference)
    # Pinned from both GDCM readers (ImageReader and ImageRegionReader agree).
    assert angiogram[500, 100:103].tolist() == [31, 28, 24] and angiogram[421, 143] == 264


def test_other_threads_stderr_reaches_stderr_during_a_gdcm_decode(capfd, monkeypatch):
    """predict's progress bar draws on the main thread while the decoding
    thread runs GDCM: its lines reach the terminal; GDCM's own lines (its
    8-bit codec refusing 12-bit data) are still held back."""
    import os
    import threading

    import gdcm

    class ImageDrawnOver(gdcm.Image):
        def GetBuffer(self):  # another thread writes while this frame is being decoded
            # os.write: what sys.stderr does in a process (capfd swaps sys.stderr, not fd 2)
            drawer = threading.Thread(target=os.write, args=(2, b"\r3/9 angiograms [==........]"))
            drawer.start()
            drawer.join()
            return super().GetBuffer()

    monkeypatch.setattr(gdcm, "Image", ImageDrawnOver)
    capfd.readouterr()
    angiogram = read_angiogram(_pydicom_file("JPEG-lossy.dcm"))
    assert angiogram[421, 143] == 264
    err = capfd.readouterr().err
    assert "3/9 angiograms [==........]" in err and "JPEG" not in err, err


def test_gdcm_frames_go_through_the_modality_lut_and_monochrome1(tmp_path):
    stored = _gdcm_image_reader_pixels(_pydicom_file("JPEG-lossy.dcm")).astype(np.float32)
    path = _jpeg_lossy(tmp_path, PhotometricInterpretation="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-10)
    # MONOCHROME1 is inverted within the LUT's output range of 12 stored bits.
    low, high = -10.0, 2.0 * 4095 - 10
    np.testing.assert_array_equal(read_angiogram(path), low + high - (2 * stored - 10))


def test_cine_that_only_gdcm_decodes_streams_frame_by_frame_and_names_a_corrupt_frame(tmp_path):
    from cm_unet_keras.data.readers import read_frames

    single = read_angiogram(_pydicom_file("JPEG-lossy.dcm"))
    corrupt = bytes(6830)  # no JPEG marker at all: no decoder reads it
    path = _jpeg_lossy(tmp_path, "run.dcm", frames=[None, None, corrupt])
    assert count_frames(path) == 3
    np.testing.assert_array_equal(read_angiogram(path, frame=1), single)
    frames = read_frames(path)
    for expected in (0, 1):  # the frames before the corrupt one arrive
        number, angiogram = next(frames)
        assert number == expected
        np.testing.assert_array_equal(angiogram, single)
    with pytest.raises(InvalidInputError, match=r"(?s)run\.dcm: frame 2: DICOM pixel data cannot be decoded: pydicom: .*; GDCM: "):
        next(frames)


def test_dicom_whose_pixel_data_no_decoder_reads_names_the_file(tmp_path):
    path = _jpeg_lossy(tmp_path, "corrupt.dcm", frames=[bytes(6830)])
    with pytest.raises(InvalidInputError, match=r"corrupt\.dcm: DICOM pixel data cannot be decoded") as error:
        read_angiogram(path)
    assert "pylibjpeg" in str(error.value) and "GDCM could not decode the frame" in str(error.value)
    # libjpeg's own words, held back while GDCM decoded, are in the error.
    assert "it said: Not a JPEG file: starts with 0x00 0x00" in str(error.value)
