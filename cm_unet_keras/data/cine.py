"""Writing X-ray angiography cine runs as multi-frame DICOM files.

The readers (`data.readers`) take what scanners write; this writes the same
kind of file from frames, for tests, benchmarks and for saving segmented or
synthetic runs where a DICOM viewer can play them.
"""

import numpy as np

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage


def xa_dataset(rows, columns, frame_count=None, bits_stored=8, photometric="MONOCHROME2"):
    """An XA DICOM dataset with its file meta and image header, no pixel data.

    Args:
        rows, columns: the frame size.
        frame_count: `NumberOfFrames` of a cine run; None for a single frame.
        bits_stored: 8 (stored in 8 bits) or more (stored in 16).
        photometric: `PhotometricInterpretation`.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.Rows, ds.Columns = rows, columns
    if frame_count is not None:
        ds.NumberOfFrames = frame_count
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    return ds


def write_xa_cine(path, frames, syntax=None, encoded=None):
    """Write 8-bit `frames` `[N, H, W]` as a multi-frame XA DICOM file.

    Args:
        path: the file to write.
        frames: `[N, H, W]` values in 0..255.
        syntax: a pydicom transfer syntax UID: None for uncompressed
            (explicit VR little endian); RLE Lossless, or JPEG 2000 (with
            pylibjpeg), compressed by pydicom.
        encoded: frames already encoded in `syntax` (e.g. JPEG from
            OpenCV), encapsulated as given.

    Returns:
        `path`.
    """
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian

    frames = np.asarray(frames, np.uint8)
    ds = xa_dataset(*frames.shape[1:], frame_count=len(frames))
    if encoded is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = frames.tobytes()
        if syntax is not None and syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, frames, encoding_plugin="pylibjpeg" if "2000" in syntax.name else "")
    ds.save_as(path, enforce_file_format=True)
    return path
