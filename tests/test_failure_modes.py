"""Failure modes looked at (benchmarks/failure_modes.py, issue 31 item 7): the
frames drawn, the error maps' colours, and notes checked before they count."""

import json

import numpy as np
import pytest

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import read_pair


@pytest.fixture(scope="module")
def failure_modes():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "failure_modes.py"
    spec = importlib.util.spec_from_file_location("failure_modes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_draw_is_fixed_and_takes_every_cimat_and_xcad_frame(failure_modes, shared_data):
    frames = failure_modes.drawn_frames(shared_data)
    assert [len(frames[part]) for part in failure_modes.PARTS] == [failure_modes.ARCADE_FRAMES, 10, 2]
    again = failure_modes.frame_keys(shared_data)
    assert again == failure_modes.frame_keys(shared_data) and len(set(again)) == len(again)
    assert all(key.startswith(("arcade_val/", "cimat/", "xcad/")) for key in again)


def test_an_error_map_colours_agreement_and_each_kind_of_error(failure_modes, shared_data):
    record = failure_modes.drawn_frames(shared_data)["cimat"][0]
    angiogram, reference = read_pair(record)
    reference = reference > 0
    predicted = np.roll(reference, 3, axis=1)  # a mask shifted: some overlap, some of each error
    picture = failure_modes.error_map(angiogram, predicted, reference)
    height, width = angiogram.shape
    assert picture.shape == (height, 2 * width + 4, 3)
    right = picture[:, width + 4:].astype(int)
    both, model_only, reference_only = predicted & reference, predicted & ~reference, ~predicted & reference
    assert both.any() and model_only.any() and reference_only.any()
    # BGR: green dominates where both mark, red where only the model does, blue where only the reference does.
    assert (right[both][:, 1] > right[both][:, 2]).all()
    assert (right[model_only][:, 2] > right[model_only][:, 0]).all()
    assert (right[reference_only][:, 0] > right[reference_only][:, 2]).all()
    untouched = ~(predicted | reference)
    assert (right[untouched][:, 0] == right[untouched][:, 1]).all()  # grey where neither marks


def test_notes_count_only_when_every_drawn_frame_has_known_tags(failure_modes, shared_data, tmp_path):
    keys = failure_modes.frame_keys(shared_data)
    path = tmp_path / "notes.json"
    frames = {key: [] for key in keys}
    frames[keys[0]] = ["catheter_marked", "thin_distal_missed"]
    frames[keys[-1]] = ["thin_distal_missed"]
    path.write_text(json.dumps({"frames": {k: v for k, v in frames.items() if k != keys[1]}}))
    with pytest.raises(InvalidInputError, match="1 drawn frames have no note"):
        failure_modes.read_notes(path, keys)
    path.write_text(json.dumps({"frames": {**frames, "arcade_val/999.png": []}}))
    with pytest.raises(InvalidInputError, match="999.png is not a frame of the draw"):
        failure_modes.read_notes(path, keys)
    path.write_text(json.dumps({"frames": {**frames, keys[2]: ["spine"]}}))
    with pytest.raises(InvalidInputError, match="unknown tag 'spine'"):
        failure_modes.read_notes(path, keys)
    path.write_text(json.dumps({"frames": frames}))
    table = failure_modes.shares(failure_modes.read_notes(path, keys))
    assert table["arcade_val"] == {"frames": failure_modes.ARCADE_FRAMES, "catheter_marked": 1,
                                   "thin_distal_missed": 1}
    assert table["xcad"] == {"frames": 2, "thin_distal_missed": 1}
    line = failure_modes.card_line(table, "run")
    # Most frequent first, each with its count per part.
    assert line.index("thin distal ends") < line.index("guiding catheter marked")
    assert "(1 of 24 ARCADE validation, 1 of 2 XCAD)" in line
