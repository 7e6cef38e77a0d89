"""The ground floor: atomic file and folder writes, JSON made safe."""

import json
import math

import numpy as np
import pytest

from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write, atomic_write_json, json_safe, publish_folder


def test_publish_folder_writes_whole_refuses_an_existing_one_and_replaces_on_request(tmp_path):
    target = tmp_path / "version"
    publish_folder(target, lambda folder: (folder / "a.txt").write_text("old"))
    assert (target / "a.txt").read_text() == "old" and oct(target.stat().st_mode)[-3:] == "755"
    with pytest.raises(InvalidInputError, match="exists"):
        publish_folder(target, lambda folder: (folder / "b.txt").write_text("new"))
    publish_folder(target, lambda folder: (folder / "b.txt").write_text("new"), overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version"]  # nothing staged or retired is left


def test_a_failed_publish_leaves_the_previous_folder_and_no_staging(tmp_path):
    target = tmp_path / "checkpoint"
    publish_folder(target, lambda folder: (folder / "weights").write_text("epoch 1"))

    def broken(folder):
        (folder / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_folder(target, broken, overwrite=True)
    assert (target / "weights").read_text() == "epoch 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # What a killed write leaves (a staging folder) is cleared by the next write of the same folder.
    (tmp_path / ".checkpoint.killed").mkdir()
    publish_folder(target, lambda folder: (folder / "weights").write_text("epoch 2"), overwrite=True,
                   clear_stale=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"epochs_done": np.int64(3)})
    assert json.loads(path.read_text()) == {"epochs_done": 3}
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda tmp: (_ for _ in ()).throw(RuntimeError("killed")))
    assert json.loads(path.read_text()) == {"epochs_done": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_json_safe_gives_what_json_holds():
    value = {"dice": np.float32(0.5), "n": np.int64(2), "hd95": math.inf, "nan": [float("nan")], "pair": (1, 2)}
    assert json_safe(value) == {"dice": 0.5, "n": 2, "hd95": None, "nan": [None], "pair": [1, 2]}
    assert json.loads(json.dumps(json_safe(value))) == json_safe(value)
