"""`cm-unet select`: which frames to annotate, on real angiograms and on a
synthetic cine whose contrast rises and falls."""

import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from cm_unet_keras.cli import main
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.data.layouts import AngiogramRecord, index_unlabeled
from cm_unet_keras.data.readers import read_angiogram
from cm_unet_keras.inference.predict import load_model
from cm_unet_keras.selection import choose_frames
from cm_unet_keras.selection.scan import scan_frames
from cm_unet_keras.selection.strategies import choose_coverage, choose_typical, peak_candidates, pick_apart

ROOT = Path(__file__).resolve().parents[1]


def _model(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pretrained-only warning
        return load_model(name)


def _rows(folder):
    with open(folder / "selection.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _cimat_files(shared_data, count):
    folder = shared_data / "xca_vessels" / "train"
    return [str(folder / f"{index}.png") for index in range(1, count + 1)]


@pytest.mark.parametrize("model", ["cmunet_small_pretrained", "cmunet_small_xca"])
def test_peak_choice_finds_the_middle_of_a_contrast_run(model, contrast_cine, tmp_path):
    path, contrast = contrast_cine
    assert main(["select", "--model", model, "--count", "1", "--strategy", "peak", "--out", str(tmp_path),
                 str(path)]) == 0
    (row,) = _rows(tmp_path)
    frame = int(row["frame"])
    assert contrast[frame] > 0.7, (frame, contrast[frame])  # frames 11-18 of 30
    assert row["source"] == str(path) and row["png"] == f"run_f{frame:04d}.png"
    kind = "vesselness" if model.endswith("pretrained") else "vessel fraction"
    assert kind in row["why"]
    written = cv2.imread(str(tmp_path / row["png"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, read_angiogram(path, frame))
    sheet = cv2.imread(str(tmp_path / "contact_sheet.png"))
    assert sheet.shape == (256, 256, 3)


def test_peak_filter_keeps_arrival_and_washout_out_and_frames_apart(contrast_cine, tmp_path, capsys):
    path, contrast = contrast_cine
    model, records = _model("cmunet_small_pretrained"), index_unlabeled(path)
    scan = scan_frames(model, records, filling=True, pretrained_only=True)
    kept = np.flatnonzero(peak_candidates(scan.records, scan.filling))
    assert kept.tolist() == list(range(kept[0], kept[-1] + 1))  # one stretch around the peak
    assert contrast[kept].min() > 0.4 and 0 not in kept and 29 not in kept
    for seed in range(3):
        chosen = choose_frames(model, records, 2, strategy="random", seed=seed, min_gap=3)
        frames = sorted(choice["record"].frame for choice in chosen)
        assert len(frames) == 2 and frames[1] - frames[0] >= 3, frames
        assert set(frames) <= set(kept.tolist()), (frames, kept)
        assert all("near peak opacification" in choice["why"] for choice in chosen)
    unfiltered = choose_frames(model, records, 4, strategy="random", seed=0, peak_filter=False)
    assert len(unfiltered) == 4 and min(contrast[c["record"].frame] for c in unfiltered) < 0.4
    # the peak is narrower than 3 frames 5 apart: fewer are proposed, and the user is told why, truly
    for strategy in ("peak", "typical"):
        out = tmp_path / strategy
        assert main(["select", "--model", "cmunet_small_pretrained", "--count", "3", "--strategy", strategy, "--out",
                     str(out), str(path)]) == 0
        proposed = [int(row["frame"]) for row in _rows(out)]
        assert len(proposed) < 3 and "fewer than --min-gap 5 frames from a proposed frame" in capsys.readouterr().err
        assert all(min(abs(frame - other) for other in proposed) < 5 for frame in kept), (strategy, proposed)


def test_frames_of_one_run_are_kept_apart():
    records = [AngiogramRecord(f"run_f{frame:04d}", "run.dcm", None, frame) for frame in range(20)]
    records.append(AngiogramRecord("single", "single.png"))
    assert pick_apart([10, 11, 12, 20, 14, 15, 3, 20, 0], records, 9, min_gap=5) == [10, 20, 15, 3]
    assert pick_apart([10, 11, 12], records, 2, min_gap=1) == [10, 11]


def test_typical_frames_of_real_angiograms_are_written_for_annotation(shared_data, tmp_path):
    files = _cimat_files(shared_data, 12)
    out = tmp_path / "chosen"
    assert main(["select", "--model", "cmunet_small_pretrained", "--count", "3", "--strategy", "typical",
                 "--out", str(out), *files]) == 0
    rows = _rows(out)
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert len({row["source"] for row in rows}) == 3 and all(row["frame"] == "" for row in rows)
    for row in rows:
        assert row["source"] in files and "most typical frame of cluster" in row["why"]
        written = cv2.imread(str(out / row["png"]), cv2.IMREAD_UNCHANGED)
        assert row["png"] == row["source"].rsplit("/", 1)[1]
        np.testing.assert_array_equal(written, read_angiogram(row["source"]))
    assert cv2.imread(str(out / "contact_sheet.png")).shape == (512, 512, 3)
    coverage = choose_frames(_model("cmunet_small_pretrained"), index_unlabeled(files), 4, strategy="typical",
                             coverage=True)
    assert len({choice["record"].name for choice in coverage}) == 4
    distances = [choice["score"] for choice in coverage[1:]]
    assert distances == sorted(distances, reverse=True)  # each farthest point is nearer than the last
    # Any angiogram shown four times (under four names) is the densest point
    # of the embedding: with one cluster, the typical frame is one of its copies.
    copies = [tmp_path / f"copy{index}.png" for index in range(3)]
    for copy in copies:
        copy.write_bytes(Path(files[10]).read_bytes())
    (row,) = (choice["record"].image_path for choice in choose_frames(
        _model("cmunet_small_pretrained"), index_unlabeled(files + [str(copy) for copy in copies]), 1))
    assert str(row) in [files[10]] + [str(copy) for copy in copies], row


def _star(centre, radius, count, rng):
    """`centre` and `count` points at `radius` from it in random directions:
    the centre is each point's nearest neighbour, so it is the most typical."""
    directions = rng.normal(size=(count, len(centre)))
    directions *= radius / np.linalg.norm(directions, axis=1, keepdims=True)
    return np.concatenate([centre[None], centre + directions])


def _pool(rng, outlier=True):
    """Features of a large dense blob (41 frames, its centre first), a small
    sparse one (21, centre first; three times as wide) and, if asked, one
    outlier opposite the large blob; 16 channels. The blobs' centres are 4
    apart in every channel and their spread is small beside it, so the
    embedding (each channel standardised, then each frame scaled to unit
    length) keeps who is near whom."""
    large_centre = rng.normal(size=16) * 2
    small_centre = large_centre + 4 * rng.choice([-1, 1], 16)
    large, small = _star(large_centre, 0.05, 40, rng), _star(small_centre, 0.15, 20, rng)
    return np.concatenate([large, small] + ([-large_centre[None]] if outlier else [])).astype(np.float32)


def test_typical_and_coverage_choose_the_known_frames_of_a_constructed_pool():
    rng = np.random.default_rng(0)
    singles = lambda count: [AngiogramRecord(f"frame{i}", f"frame{i}.png") for i in range(count)]  # noqa: E731
    features = _pool(rng)
    candidates, records = np.arange(len(features)), singles(len(features))
    outlier, small_centre = len(features) - 1, 41  # the large blob's centre is row 0
    # one cluster: the large blob's centre; two: both centres, the larger blob's first
    assert choose_typical(candidates, features, records, 1, seed=0)[0] == [0]
    without = _pool(np.random.default_rng(0), outlier=False)
    assert choose_typical(np.arange(len(without)), without, singles(len(without)), 2, seed=0)[0] == [0, small_centre]
    # k-center greedy covers the three groups: a frame of each blob and the outlier
    chosen, scores, _ = choose_coverage(candidates, features, records, 3)
    assert sorted(0 if row < 41 else 1 if row < outlier else 2 for row in chosen) == [0, 1, 2], chosen
    assert chosen[0] < 41 and scores[1] >= scores[2] > 0  # the embedding's centre is in the large blob


def test_typical_falls_back_when_the_gap_blocks_a_whole_cluster():
    # One cine run: the large blob's centre on frame 30 and its other 40
    # frames at 0-18 and 42-62; the small blob on frames 19-40 but 30, all
    # within --min-gap 12 of frame 30, so the whole small cluster is refused.
    features = _pool(np.random.default_rng(1), outlier=False)
    frames = [30] + list(range(0, 19)) + list(range(42, 63)) + list(range(19, 30)) + list(range(31, 41))
    records = [AngiogramRecord(f"run_f{frame:04d}", "run.dcm", None, frame) for frame in frames]
    candidates = np.arange(len(features))
    chosen, scores, reasons = choose_typical(candidates, features, records, 2, seed=0, min_gap=12)
    assert len(chosen) == 2 and chosen[0] == 0 and 1 <= chosen[1] <= 40, chosen  # the large blob gives two
    assert abs(frames[chosen[1]] - 30) >= 12
    assert "next most typical frame of cluster 1 of 2" in reasons[1] and "every frame of cluster 2 " in reasons[1]
    # With every frame within the gap of any other, one frame is all there is.
    assert len(choose_typical(candidates, features, records, 5, seed=0, min_gap=100)[0]) == 1


# Runs in a child so that its peak resident memory is its own (TensorFlow
# loaded, as in `select`): 20,000 frames' features (200 cine runs of 100
# frames), every frame a candidate, each strategy at 1 and 50 frames. 64
# channels, not the presets' 256, to keep it quick: what grew with the
# square of the frames was the all-pairs array, whatever the channels.
MEMORY_CHILD = textwrap.dedent("""
    import json
    import numpy as np
    from cm_unet_keras.data.layouts import AngiogramRecord
    from cm_unet_keras.selection import strategies

    runs, frames, channels = 200, 100, 64
    rng = np.random.default_rng(0)
    records = [AngiogramRecord(f"run{r}_f{f:04d}", f"run{r}.dcm", None, f) for r in range(runs) for f in range(frames)]
    centres = 3 * rng.normal(size=(50, channels))
    features = (centres[rng.integers(0, 50, runs * frames)] + 0.3 * rng.normal(size=(runs * frames, channels)))
    features = features.astype(np.float32)
    filling = np.tile(np.exp(-((np.arange(frames) - 50) / 20.0) ** 2), runs)
    near = strategies.peak_candidates(records, filling)
    candidates = np.arange(len(records))
    counts = {"near_peak": int(near.sum())}
    for count in (1, 50):
        counts[f"typical {count}"] = len(strategies.choose_typical(candidates, features, records, count, 0)[0])
        counts[f"coverage {count}"] = len(strategies.choose_coverage(candidates, features, records, count)[0])
        counts[f"peak {count}"] = len(strategies.choose_ranked(candidates, filling, records, count, "filling")[0])
        counts[f"random {count}"] = len(strategies.choose_random(candidates, records, count, 0)[0])
    # VmHWM: this process image's own peak. ru_maxrss would carry the parent's
    # (Linux keeps the larger across exec, and a vfork child shares the parent's memory).
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    counts["peak_rss_mb"] = peak_kb / 1024
    print(json.dumps(counts))
""")


def test_every_strategy_chooses_among_20000_frames_in_under_2_gb():
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True, env=environment,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert 0 < result["near_peak"] < 20000
    assert {key: value for key, value in result.items() if key[-2:] in (" 1", "50")} == {
        f"{strategy} {count}": count for count in (1, 50) for strategy in ("typical", "coverage", "peak", "random")}
    assert result["peak_rss_mb"] < 2048, result  # was an n x n x channels array: 205 GB here


def _uncertainty_pool(shared_data, folder):
    """Two CIMAT angiograms, the first also mirrored, a flat grey frame and
    a noise frame, as PNGs in `folder`."""
    train = shared_data / "xca_vessels" / "train"
    first, second = (cv2.imread(str(train / name), cv2.IMREAD_GRAYSCALE) for name in ("1.png", "2.png"))
    folder.mkdir()
    cv2.imwrite(str(folder / "first.png"), first)
    cv2.imwrite(str(folder / "first_mirrored.png"), np.ascontiguousarray(first[:, ::-1]))
    cv2.imwrite(str(folder / "second.png"), second)
    cv2.imwrite(str(folder / "flat.png"), np.full((300, 300), 128, np.uint8))
    noise = np.random.default_rng(0).normal(128, 10, (300, 300))
    cv2.imwrite(str(folder / "noise.png"), np.clip(noise, 0, 255).astype(np.uint8))
    return folder


def test_uncertainty_ranks_a_constructed_pool_and_records_its_precision(shared_data, tmp_path):
    pool = _uncertainty_pool(shared_data, tmp_path / "pool")
    command = ["select", "--model", "cmunet_small_xca", "--count", "5", "--strategy", "uncertainty", str(pool)]
    assert main([*command, "--out", str(tmp_path / "default")]) == 0
    rows = _rows(tmp_path / "default")
    order = [Path(row["png"]).stem for row in rows]
    scores = {Path(row["png"]).stem: float(row["score"]) for row in rows}
    # A flat frame gives every flip the same picture: no disagreement; noise
    # holds no vessel to disagree on; the angiograms' vessel edges do.
    assert order[3:] == ["noise", "flat"] and scores["flat"] < 1e-4 < scores["noise"], scores
    assert min(scores["first"], scores["second"]) > 2 * scores["noise"], scores
    # A mirrored frame's four flips are the frame's own four: the same score.
    np.testing.assert_allclose(scores["first_mirrored"], scores["first"], rtol=1e-4)
    recorded = json.loads((tmp_path / "default" / "selection.json").read_text())
    assert recorded["precision"] == "float32" and recorded["strategy"] == "uncertainty" and recorded["proposed"] == 5
    assert main([*command, "--out", str(tmp_path / "bf16"), "--precision", "mixed_bfloat16"]) == 0
    assert json.loads((tmp_path / "bf16" / "selection.json").read_text())["precision"] == "mixed_bfloat16"
    rounded = {Path(row["png"]).stem: float(row["score"]) for row in _rows(tmp_path / "bf16")}
    assert rounded != scores and [Path(row["png"]).stem for row in _rows(tmp_path / "bf16")][3:] == ["noise", "flat"]


def test_uncertainty_refuses_a_pretrained_only_model(shared_data, tmp_path, capsys):
    code = main(["select", "--model", "cmunet_small_pretrained", "--count", "1", "--strategy", "uncertainty",
                 "--out", str(tmp_path), *_cimat_files(shared_data, 2)])
    assert code == 2
    assert "needs a fine-tuned model" in capsys.readouterr().err
    assert not (tmp_path / "selection.csv").exists()


def test_random_draw_is_seeded_and_bad_files_are_named(shared_data, tmp_path):
    model, files = _model("cmunet_small_pretrained"), _cimat_files(shared_data, 10)
    draw = lambda seed: [c["record"].name for c in choose_frames(model, index_unlabeled(files), 3, "random", seed=seed)]  # noqa: E731
    assert draw(1) == draw(1) and draw(1) != draw(2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="broken.png"):
        choose_frames(model, index_unlabeled(files[:3] + [str(broken)]), 2, "random")
    skipped = []
    chosen = choose_frames(model, index_unlabeled(files[:3] + [str(broken)]), 3, "random", skipped=skipped)
    assert len(chosen) == 3 and [path for path, _ in skipped] == [str(broken)]
    with pytest.raises(ValueError, match="only 3 are candidates"):
        choose_frames(model, index_unlabeled(files[:3]), 4, "random")
