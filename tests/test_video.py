"""`cm-unet predict --video`: an overlay MP4, the vessel-filling curve and
the best frame of a cine run, in one predict call."""

import json

import cv2
import numpy as np

from cm_unet_keras.cli import main
from cm_unet_keras.data.filling_curve import best_frame, near_peak, smoothed


def _decoded(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"OpenCV cannot open {path}"
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace").lower()
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return fourcc, frames


def test_predict_video_of_a_contrast_run(contrast_cine, tmp_path, capsys):
    path, contrast = contrast_cine
    assert main(["predict", "--video", "--quiet", "--model", "cmunet_small_xca", "--out", str(tmp_path),
                 str(path)]) == 0
    summary = json.loads((tmp_path / "run_cine.json").read_text())
    assert summary["frames"] == 30 and summary["video"] == "run_overlay.mp4"
    assert contrast[summary["best_frame"]] > 0.7, summary["best_frame"]  # frames 11-18 of 30
    near = summary["near_peak_frames"]
    assert near == list(range(near[0], near[-1] + 1)) and min(contrast[near]) > 0.4
    assert f"best frame {summary['best_frame']}" in capsys.readouterr().out

    fourcc, frames = _decoded(tmp_path / "run_overlay.mp4")
    assert fourcc in ("avc1", "fmp4", "mp4v") and len(frames) == 30 and frames[0].shape == (512, 512, 3)
    for index in (0, summary["best_frame"]):
        written = cv2.imread(str(tmp_path / f"run_f{index:04d}_overlay.png")).astype(np.float32)
        difference = np.abs(frames[index].astype(np.float32) - written)
        assert difference[60:].mean() < 6.0  # the overlay, through a lossy codec
        assert difference[:40, :200].mean() > 3 * difference[60:].mean()  # the frame number burnt in
    mask = cv2.imread(str(tmp_path / f"run_f{summary['best_frame']:04d}_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    red = frames[summary["best_frame"]][..., 2].astype(int) - frames[summary["best_frame"]][..., 0]
    assert red[mask].mean() > red[~mask].mean() + 40  # vessels drawn in colour

    plot = cv2.imread(str(tmp_path / "run_filling.png"))
    assert plot.shape == (360, 720, 3) and (plot < 250).any()


def test_predict_video_leaves_single_angiograms_alone(shared_data, tmp_path, capsys):
    image = shared_data / "arcade_vessels" / "val" / "images"
    first = sorted(image.iterdir())[0]
    assert main(["predict", "--video", "--quiet", "--model", "cmunet_small_general", "--out", str(tmp_path),
                 str(first)]) == 0
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob("*_cine.json"))
    assert (tmp_path / f"{first.stem}_overlay.png").is_file()
    assert "best frame" not in capsys.readouterr().out


def test_best_frame_and_peak_window_of_a_curve():
    curve = np.array([0.01, 0.01, 0.012, 0.03, 0.05, 0.06, 0.058, 0.04, 0.02, 0.011, 0.01])
    np.testing.assert_allclose(smoothed(curve)[5], (0.05 + 0.06 + 0.058) / 3)
    assert best_frame(curve) == 5
    # smoothed: 0.010 lowest, 0.056 highest, so the level is 0.0376: frames 4-7 (0.0467, 0.056, 0.0527, 0.0393)
    assert np.flatnonzero(near_peak(curve)).tolist() == [4, 5, 6, 7]
    assert near_peak(np.full(6, 0.02)).all()  # no arrival or washout to filter on
    assert best_frame(np.array([0.3, 0.0, 0.0, 0.0])) == 0


def test_predict_video_of_a_cine_whose_frame_fails_keeps_the_frames_before_it(shared_data, tmp_path, capsys):
    """Frame 4 of 6 is not JPEG data: the error names the file and the frame;
    frames 0-3 are segmented and written, and their overlay video is a
    finished MP4 that a player reads to the end; no curve or summary is
    written for a run that was not read to its end."""
    from pydicom.uid import JPEGBaseline8Bit

    from cm_unet_keras.data.cine import write_xa_cine

    angiogram = cv2.imread(str(shared_data / "xca_vessels" / "train" / "1.png"), cv2.IMREAD_GRAYSCALE)
    frames = np.stack([cv2.resize(angiogram, (128, 128))] * 6)
    encoded = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in frames]
    encoded[4] = bytes(len(encoded[4]))
    path = write_xa_cine(tmp_path / "run.dcm", frames, syntax=JPEGBaseline8Bit, encoded=encoded)
    out = tmp_path / "out"
    assert main(["predict", "--video", "--quiet", "--model", "cmunet_small_xca", "--batch-size", "8",
                 "--out", str(out), str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}: frame 4: DICOM pixel data cannot be decoded" in error, error
    assert sorted(p.name for p in out.glob("*_mask.png")) == [f"run_f{i:04d}_mask.png" for i in range(4)]
    fourcc, written = _decoded(out / "run_overlay.mp4")
    assert len(written) == 4 and written[0].shape == (128, 128, 3)
    assert not (out / "run_cine.json").exists() and not (out / "run_filling.png").exists()
