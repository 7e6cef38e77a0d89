"""Fixtures shared by the test modules."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data():
    """The public angiograms in ../shared/data (see its README.md).

    Missing data is a broken checkout, not a reason to skip: tests fail.
    """
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"shared test data not found at {folder}: the tests read the real "
            "angiograms from ../shared/data next to the project root"
        )
    return folder
