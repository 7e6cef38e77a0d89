"""Decoding compressed DICOM frames with the GDCM library, one at a time.

`data.readers` decodes DICOM with pydicom's plugins first. Some files that
scanners write are refused by all of them but decoded by GDCM itself: JPEG
extended 12-bit with scan parameters the standard forbids, as some GE
scanners write (pydicom's `JPEG-lossy.dcm`: pylibjpeg refuses its scan
header, and pydicom's GDCM plugin refuses 12-bit JPEG extended outright).
For those, `iter_gdcm_frames` hands each encapsulated frame to GDCM's codecs.

Why not `gdcm.ImageReader` or `gdcm.ImageRegionReader` on the file: the
first decodes a whole cine run into one buffer (a long run at once), and
the second aborts the process (an uncaught C++ exception) on a multi-frame
12-bit JPEG extended file. A `gdcm.Image` per frame, as pydicom's own GDCM
plugin builds it, decodes one frame at a time and reports a corrupt frame
by returning no buffer.
"""

import contextlib
import ctypes
import os
import threading

import numpy as np


class GdcmDecodeError(ValueError):
    """GDCM could not decode a frame; the message says why (the caller names the file)."""


def iter_gdcm_frames(header, indices):
    """Yield the stored frames `indices` (increasing) of a DICOM dataset, decoded by GDCM.

    Args:
        header: the pydicom dataset; its `PixelData` (encapsulated) is read
            here, compressed, and split into frames with pydicom.
        indices: 0-based frame numbers, in increasing order.

    Yields:
        `[Rows, Columns]` arrays of the stored values (before the Modality
        LUT), in the dtype of BitsAllocated and PixelRepresentation; signed
        values narrower than their container are sign-extended.

    Raises:
        GdcmDecodeError: GDCM is not installed, the transfer syntax is not
            compressed, the frames are not monochrome, or GDCM returns no
            pixels (or the wrong number of bytes) for a frame.
    """
    gdcm = _import_gdcm()
    from pydicom.encaps import generate_frames

    syntax = header.file_meta.TransferSyntaxUID
    if not syntax.is_encapsulated:
        raise GdcmDecodeError(f"GDCM is tried on compressed pixel data only, not {syntax.name}")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise GdcmDecodeError("GDCM is tried on monochrome frames only (SamplesPerPixel 1)")
    rows, columns = int(header.Rows), int(header.Columns)
    dtype = _stored_dtype(header)
    count = int(header.get("NumberOfFrames") or 1)
    wanted = iter(indices)
    target = next(wanted, None)
    for index, encoded in enumerate(generate_frames(header.PixelData, number_of_frames=count)):
        if target is None:
            return
        if index == target:
            yield _decode(gdcm, encoded, header, rows, columns, dtype)
            target = next(wanted, None)
    if target is not None:
        raise GdcmDecodeError(f"frame {target} is missing from the encapsulated pixel data")


def _import_gdcm():
    try:
        import gdcm
    except ImportError as error:
        raise GdcmDecodeError(f"GDCM is not installed (pip install python-gdcm): {error}") from None
    return gdcm


def _stored_dtype(header):
    bits = int(header.BitsAllocated)
    if bits not in (8, 16, 32):
        raise GdcmDecodeError(f"BitsAllocated {bits} is not 8, 16 or 32")
    signed = int(header.get("PixelRepresentation", 0)) == 1
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}").newbyteorder("<")


def _decode(gdcm, encoded, header, rows, columns, dtype):
    """One encapsulated frame through GDCM's codec for its transfer syntax."""
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(encoded)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((columns, rows, 1))
    image.SetDataElement(element)
    photometric = gdcm.PhotometricInterpretation.GetPIType(str(header.get("PhotometricInterpretation", "MONOCHROME2")))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    syntax = gdcm.TransferSyntax.GetTSType(str(header.file_meta.TransferSyntaxUID))
    image.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    bits_stored = int(header.get("BitsStored") or dtype.itemsize * 8)
    image.SetPixelFormat(gdcm.PixelFormat(1, dtype.itemsize * 8, bits_stored, bits_stored - 1, dtype.kind == "i"))
    with _stderr_captured() as said:
        buffer = image.GetBuffer()
    if buffer is None:
        detail = "; ".join(line for line in said if line)
        raise GdcmDecodeError("GDCM could not decode the frame (corrupt or unsupported compressed data"
                              + (f"; it said: {detail})" if detail else ")"))
    # GDCM hands its char* buffer to Python as a str: back to the bytes.
    data = buffer.encode("utf-8", "surrogateescape")
    if len(data) != rows * columns * dtype.itemsize:
        raise GdcmDecodeError(f"GDCM returned {len(data)} bytes for a {rows}x{columns} frame of {dtype.name}")
    frame = np.frombuffer(data, dtype).reshape(rows, columns).astype(dtype.newbyteorder("="))
    unused = dtype.itemsize * 8 - bits_stored
    if dtype.kind == "i" and unused > 0:
        frame = (frame << unused) >> unused  # sign-extend the stored bits
    return frame


# One capture at a time: the C stream is the process's, and so is the sink.
_CAPTURE_LOCK = threading.Lock()
_C_STDERR = {}


def _c_stderr():
    """`(libc, stderr, sink)`: the C library, its `stderr` pointer as a
    ctypes variable and the `FILE *` that stands in for it during a decode;
    or None where `stderr` is not a variable (Windows' C runtime)."""
    if "stream" not in _C_STDERR:
        _C_STDERR["stream"] = None
        try:
            libc = ctypes.CDLL(None)
        except (OSError, TypeError):  # Windows: no handle on the process's own symbols
            return None
        for name in ("stderr", "__stderrp"):  # glibc and musl; macOS
            try:
                variable = ctypes.c_void_p.in_dll(libc, name)
            except ValueError:
                continue
            libc.tmpfile.restype = ctypes.c_void_p
            for function in (libc.fflush, libc.fileno, libc.rewind):
                function.argtypes = [ctypes.c_void_p]
            # Never closed: a thread may still write through the pointer it read before the swap back.
            sink = libc.tmpfile()
            if sink:
                _C_STDERR["stream"] = (libc, variable, sink)
            break
    return _C_STDERR["stream"]


@contextlib.contextmanager
def _stderr_captured():
    """Hold what C code prints to the C library's `stderr` stream inside the
    block; yields a list that holds those lines once the block has ended.

    GDCM's JPEG codecs print libjpeg's messages with `fprintf(stderr, ...)`
    as they try the 8-bit decoder before the 12-bit one ("Unsupported JPEG
    data precision 12", "Invalid SOS parameters for sequential JPEG"): two
    lines a frame on a file they then decode correctly. GDCM's own trace
    switches (`gdcm.Trace`) do not reach libjpeg, so for the milliseconds of
    one frame's decode the C `stderr` pointer is pointed at a file of ours:
    the lines are kept, and shown in the error only when the frame cannot
    be decoded. File descriptor 2 is left alone: what other threads write
    to it (Python's `sys.stderr`, `predict`'s progress bar) reaches the
    terminal; only another thread's C `fprintf(stderr, ...)` in that window
    lands with GDCM's lines. Where `stderr` is not a variable (Windows),
    nothing is captured and GDCM's lines reach the console.
    """
    captured = []
    with _CAPTURE_LOCK:
        stream = _c_stderr()
        if stream is None:
            yield captured
            return
        libc, variable, sink = stream
        libc.rewind(sink)
        os.ftruncate(libc.fileno(sink), 0)
        saved = variable.value
        variable.value = sink
        try:
            yield captured
        finally:
            variable.value = saved
            libc.fflush(sink)
            descriptor = libc.fileno(sink)
            said = os.pread(descriptor, os.fstat(descriptor).st_size, 0)
            captured.extend(said.decode("utf-8", "replace").strip().splitlines())
