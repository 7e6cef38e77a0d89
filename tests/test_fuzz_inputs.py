"""Property-based tests: random bytes and names never crash the readers.

Whatever a file holds, reading it either gives a finite float32 image or
raises `InvalidInputError` naming the file; indexing a folder of random
names either gives records or an `InvalidInputError`.
"""

import string

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import index_pairs, index_unlabeled
from cm_unet_keras.data.readers import read_angiogram, read_vessel_mask

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_PREAMBLE = b"\x00" * 128 + b"DICM"

contents = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=2048).map(lambda tail: PNG_SIGNATURE + tail),
    st.binary(max_size=2048).map(lambda tail: DICOM_PREAMBLE + tail),
)
suffixes = st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".dcm", ""])
names = st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=12).filter(
    lambda name: name.strip(". ") == name and name not in (".", "..")
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=contents, suffix=suffixes)
def test_readers_either_read_or_name_the_file(tmp_path, data, suffix):
    path = tmp_path / f"fuzzed{suffix}"
    path.write_bytes(data)
    for read in (read_angiogram, read_vessel_mask):
        try:
            image = read(path)
        except InvalidInputError as error:
            assert str(path) in str(error) and error.problem
        else:
            assert image.ndim == 2 and np.all(np.isfinite(image))


@FUZZ
@given(files=st.lists(st.tuples(names, suffixes, contents), max_size=6))
def test_indexers_either_index_or_name_the_problem(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("fuzz")
    for stem, suffix, data in files:
        (folder / f"{stem}{suffix}").write_bytes(data)
    for index in (lambda: index_pairs(folder), lambda: index_unlabeled([folder])):
        try:
            records = index()
        except InvalidInputError as error:
            assert error.path and error.problem
        else:
            assert records and len({record.name for record in records}) == len(records)
