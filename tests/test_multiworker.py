"""Two real worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from cm_unet_keras.data.synthetic import write_synthetic_dataset

JOB = Path(__file__).with_name("multiworker_job.py")


def _free_port_pair():
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port


def test_two_workers_train_to_identical_weights_and_only_the_chief_writes(tmp_path):
    write_synthetic_dataset(tmp_path / "data", 6, size=64, seed=3)
    port = _free_port_pair()
    workers = [
        subprocess.Popen(
            [sys.executable, str(JOB), str(index), str(port), str(tmp_path / "data"), str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for index in (0, 1)
    ]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    for stage in ("pretrained", "weights"):
        first = np.load(tmp_path / f"{stage}_0.npz")
        second = np.load(tmp_path / f"{stage}_1.npz")
        assert len(first.files) == len(second.files) > 0
        for key in first.files:
            np.testing.assert_array_equal(first[key], second[key], err_msg=f"{stage} {key}")
    chief, other = tmp_path / "finetune_0", tmp_path / "finetune_1"
    assert (chief / "checkpoints" / "last.keras").is_file() and (chief / "model.keras").is_file()
    assert (tmp_path / "pretrain_0" / "pretrained.weights.h5").is_file()
    for folder in (other, tmp_path / "pretrain_1"):
        written = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
        assert not written or all("cache" in p.parts for p in written), written
    assert "worker 0 done" in outputs[0] and "worker 1 done" in outputs[1]
