"""Writing X-ray angiography cine runs as multi-frame DICOM files.

The readers (`data.readers`) take what scanners write; this writes the same
kind of file from frames, for tests, benchmarks and for saving segmented or
synthetic runs where a DICOM viewer can play them.
"""

import numpy as np

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage


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
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames, np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
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
