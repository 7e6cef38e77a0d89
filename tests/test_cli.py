"""The `cm-unet` commands end to end, and their errors on bad input."""

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cm_unet_keras import CMUNet
from cm_unet_keras.cli import main


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    CMUNet(base_filters=4, depth=2).save(path)
    return path


@pytest.fixture
def pairs(tmp_path, shared_data):
    """Three real XCA pairs copied into a folder we may break."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for stem in ("1", "2", "3"):
        for suffix in ("", "_gt"):
            shutil.copy(shared_data / "xca_vessels" / "train" / f"{stem}{suffix}.png", folder)
    return folder


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


def test_evaluate_writes_the_documented_json(pairs, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, printed = _run(["evaluate", "--model", str(tiny_model_path), "--pairs", str(pairs), "--json", str(out)], capsys)
    assert code == 0
    report = json.loads(out.read_text())
    keys = {"dice", "iou", "cldice", "centerline_recall", "sensitivity", "specificity", "hd95"}
    assert report["n_images"] == 3
    assert set(report["mean"]) == keys and set(report["std"]) == keys
    assert [row["name"] for row in report["per_image"]] == ["1", "2", "3"]
    assert all(set(row) == keys | {"name"} for row in report["per_image"])
    assert report["mean"]["dice"] == pytest.approx(np.mean([row["dice"] for row in report["per_image"]]))
    assert "dice" in printed.out


def test_evaluate_refuses_a_pretrained_only_model_and_writes_nothing(pairs, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, printed = _run(["evaluate", "--model", "cmunet_small_pretrained", "--pairs", str(pairs),
                          "--json", str(out)], capsys)
    assert code != 0
    assert "pretrained only" in printed.err and "cmunet_small_pretrained" in printed.err
    assert not out.exists()


def test_predict_writes_mask_probability_and_overlay_for_any_size(tiny_model_path, tmp_path, shared_data, capsys):
    odd = tmp_path / "odd.png"
    cv2.imwrite(str(odd), np.random.default_rng(0).integers(0, 255, (333, 517), dtype=np.uint8))
    arcade = shared_data / "arcade_stenosis" / "train" / "images" / "1.png"  # stored as RGB
    code, _ = _run(["predict", "--model", str(tiny_model_path), "--out", str(tmp_path / "out"), str(odd), str(arcade)], capsys)
    assert code == 0
    for name, shape in (("odd", (333, 517)), ("1", (512, 512))):
        mask = cv2.imread(str(tmp_path / "out" / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
        assert cv2.imread(str(tmp_path / "out" / f"{name}_prob.png"), cv2.IMREAD_UNCHANGED).shape == shape
        assert cv2.imread(str(tmp_path / "out" / f"{name}_overlay.png")).shape == shape + (3,)


def test_synth_command(tmp_path, capsys):
    code, _ = _run(["synth", "--out", str(tmp_path / "s"), "--count", "2", "--size", "64"], capsys)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "s" / "masks").iterdir()) == ["synth_0000.png", "synth_0001.png"]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _resize(path):
    cv2.imwrite(str(path), np.zeros((200, 300), np.uint8))


@pytest.mark.parametrize(
    "break_it, broken, culprit, problem",
    [
        (_truncate, "2.png", "2.png", "decod"),
        (_empty, "2.png", "2.png", "empty"),
        (_resize, "2_gt.png", "2_gt.png", "match"),
        (lambda path: path.unlink(), "2_gt.png", "2.png", "mask"),
    ],
    ids=["truncated-png", "zero-byte", "size-mismatch", "missing-mask"],
)
@pytest.mark.parametrize("command", ["evaluate", "finetune"])
def test_bad_input_exits_non_zero_naming_the_file(
    command, break_it, broken, culprit, problem, pairs, tiny_model_path, tmp_path, capsys
):
    break_it(pairs / broken)
    if command == "evaluate":
        argv = ["evaluate", "--model", str(tiny_model_path), "--pairs", str(pairs)]
    else:
        argv = ["finetune", "--pairs", str(pairs), "--out", str(tmp_path / "run"), "--epochs", "1"]
    code, printed = _run(argv, capsys)
    assert code != 0
    assert culprit in printed.err and problem in printed.err.lower(), printed.err


def test_empty_folder_exits_non_zero(tmp_path, tiny_model_path, capsys):
    (tmp_path / "nothing").mkdir()
    code, printed = _run(["evaluate", "--model", str(tiny_model_path), "--pairs", str(tmp_path / "nothing")], capsys)
    assert code != 0 and "nothing" in printed.err


def test_console_script_reports_a_missing_model(tmp_path):
    script = Path(sys.executable).parent / "cm-unet"
    assert script.is_file(), "the package must be installed (pip install -e .)"
    result = subprocess.run(
        [str(script), "predict", "--model", str(tmp_path / "absent.keras"), "--output", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "absent.keras" in result.stderr


def test_quick_demo_segments_adapts_and_pretrains_on_the_shipped_angiograms(tmp_path, capsys):
    code, printed = _run(["demo", "--out", str(tmp_path / "demo"), "--quick", "--precision", "float32"], capsys)
    assert code == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    # 1: the preset segmented every shipped angiogram, one overlay and one Dice each.
    for name in ("cimat_1", "cimat_9", "arcade_37", "arcade_193"):
        assert (tmp_path / "demo" / "segment" / f"{name}_overlay.png").is_file()
        assert f"](segment/{name}_overlay.png)" in report
    rows = [line for line in report.splitlines() if line.startswith("| cimat_") or line.startswith("| arcade_")]
    dice = [float(row.split("|")[3]) for row in rows[:8]]
    assert len(dice) == 8 and min(dice) > 0.3  # a trained preset, not noise
    # 2: fine-tuned on 3 pairs, the 5 others scored before and after.
    assert "| cimat_8 |" in report and "Dice after" in report and "not a converged model" in report
    history = (tmp_path / "demo" / "few_labels" / "history.csv").read_text()
    assert history.count("\n") == 2  # the header and the quick run's one epoch
    # 3: a pretraining run folder that `finetune --init` takes.
    assert (tmp_path / "demo" / "pretrain" / "pretrained.weights.h5").is_file()
    # A run that holds nothing out prints no validation metric (issue 27).
    assert not re.search(r"\bnan\b", printed.out + printed.err + report, re.IGNORECASE)
    assert "val_dice" not in printed.out + printed.err


def test_the_demo_angiograms_are_the_public_files_named_in_their_readme(shared_data):
    root = Path(__file__).resolve().parents[1]
    shipped, data = root / "cm_unet_keras" / "demo_data", shared_data
    xca_train = set(json.loads((root / "recipes" / "xca_split.json").read_text())["train"])
    arcade_holdout = set(json.loads((root / "recipes" / "arcade_split.json").read_text())["holdout"])
    cimat = sorted(shipped.glob("cimat/*.png"))
    arcade = sorted(shipped.glob("arcade/*/*.png"))
    assert len(cimat) == 10 and len(arcade) == 6
    for path in cimat:
        assert path.stem.removesuffix("_gt") in xca_train
        assert path.read_bytes() == (data / "xca_vessels" / "train" / path.name).read_bytes()
    for path in arcade:
        assert path.stem in arcade_holdout
        assert path.read_bytes() == (data / "arcade_vessels" / "val" / path.parent.name / path.name).read_bytes()
    notice = (shipped / "README.md").read_text()
    assert "BSD-3-Clause" in notice and "CC BY 4.0" in notice and "Copyright (c) 2016, fercer" in notice


def test_the_wheel_ships_the_demo_angiograms(tmp_path):
    import zipfile

    root = Path(__file__).resolve().parents[1]
    # Built from a copy: pip builds in place, and its build/ would land in the checkout.
    checkout = tmp_path / "checkout"
    shutil.copytree(root / "cm_unet_keras", checkout / "cm_unet_keras", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(root / name, checkout)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(checkout)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("cm_unet_keras-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if "/demo_data/" in name}
    source = root / "cm_unet_keras" / "demo_data"
    expected = {f"cm_unet_keras/demo_data/{p.relative_to(source).as_posix()}" for p in source.rglob("*") if p.is_file()}
    assert len(expected) == 17 and shipped == expected
    assert sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) < 600_000


def test_skip_invalid_leaves_out_and_lists_bad_pairs(pairs, tiny_model_path, tmp_path, capsys):
    _truncate(pairs / "2.png")
    (pairs / "3_gt.png").unlink()
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--model", str(tiny_model_path), "--pairs", str(pairs), "--json", str(out), "--skip-invalid"]
    code, printed = _run(argv, capsys)
    assert code == 0
    assert json.loads(out.read_text())["n_images"] == 1
    assert "2.png" in printed.err and "3.png" in printed.err and "skipped 2 invalid" in printed.err


def test_predict_skip_invalid_segments_the_readable_files(tiny_model_path, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), np.full((40, 40), 100, np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    argv = ["predict", "--model", str(tiny_model_path), "--output", str(tmp_path / "out"), str(folder)]
    code, printed = _run(argv, capsys)
    assert code != 0 and "broken.png" in printed.err
    code, printed = _run(argv + ["--skip-invalid"], capsys)
    assert code == 0 and "broken.png" in printed.err and "skipped 1 invalid" in printed.err
    assert (tmp_path / "out" / "good_mask.png").is_file() and not (tmp_path / "out" / "broken_mask.png").exists()


def test_version_flag_prints_the_package_version(capsys):
    from cm_unet_keras import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cm-unet-keras {__version__}"


def test_missing_tensorflow_names_the_extras():
    code = "import sys; sys.modules['tensorflow'] = None; import cm_unet_keras"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cm-unet-keras needs TensorFlow") and "[cpu]" in last and "[cuda]" in last
    assert "During handling" not in done.stderr and "direct cause" not in done.stderr  # one error, not a chain


def test_evaluate_and_predict_use_the_runs_clahe_and_threshold(pairs, tiny_model_path, tmp_path, capsys):
    from cm_unet_keras.data.layouts import index_pairs
    from cm_unet_keras.data.readers import read_angiogram
    from cm_unet_keras.evaluation.evaluate import evaluate_model
    from cm_unet_keras.inference.predict import load_model, segment_angiogram

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_model_path, run / "model.keras")
    (run / "config.yaml").write_text("clahe: true\nthreshold: 0.45\n")  # as `finetune --clahe` writes it
    model, records = load_model(run / "model.keras"), index_pairs(pairs)

    def evaluated(*flags):
        out = tmp_path / "e.json"
        code, printed = _run(["evaluate", "--model", str(run / "model.keras"), "--pairs", str(pairs),
                              "--json", str(out), *flags], capsys)
        assert code == 0
        return json.loads(out.read_text())["mean"]["dice"], printed.err

    dice, told = evaluated()
    assert "threshold 0.45, CLAHE on (from" in told and "config.yaml" in told
    assert dice == pytest.approx(evaluate_model(model, records, threshold=0.45, clahe=True)["mean"]["dice"])
    plain = evaluate_model(model, records, threshold=0.5, clahe=False)["mean"]["dice"]
    # The recorded settings change the result: compared on the masks, since
    # this barely trained model's Dice (about 0.09) moves by as little as 5e-5.
    image = read_angiogram(pairs / "1.png")
    recorded = segment_angiogram(model, image, clahe=True) >= 0.45
    assert (recorded != (segment_angiogram(model, image, clahe=False) >= 0.5)).sum() > 20
    assert evaluated("--no-clahe", "--threshold", "0.5")[0] == pytest.approx(plain)

    code, _ = _run(["predict", "--model", str(run / "model.keras"), "--out", str(tmp_path / "p"),
                    "--precision", "float32", str(pairs / "1.png")], capsys)
    assert code == 0
    written = cv2.imread(str(tmp_path / "p" / "1_mask.png"), cv2.IMREAD_UNCHANGED) > 0
    expected = segment_angiogram(model, read_angiogram(pairs / "1.png"), clahe=True) >= 0.45
    np.testing.assert_array_equal(written, expected)


def test_nnunet_dataset_for_split_finetune_evaluate_and_tune(nnunet_dataset, tmp_path, capsys):
    dataset = ["--nnunet", str(nnunet_dataset)]
    split = tmp_path / "split.json"
    assert _run(["split", *dataset, "--holdout", "1", "--out", str(split)], capsys)[0] == 0
    train = json.loads(split.read_text())["train"]
    assert len(train) == 3 and all(name.startswith("xca_") for name in train)

    tiny = ["--base-filters", "4", "--depth", "2", "--patch-size", "32", "--epochs", "1", "--steps-per-epoch", "1"]
    run = tmp_path / "run"
    code, _ = _run(["finetune", *dataset, "--split", str(split), "--out", str(run), *tiny, "--quiet"], capsys)
    assert code == 0 and json.loads((run / "split.json").read_text())["train"] == sorted(train)

    report = tmp_path / "test.json"
    code, _ = _run(["evaluate", "--model", str(run / "model.keras"), *dataset, "--nnunet-set", "test",
                    "--json", str(report)], capsys)
    assert code == 0
    assert [row["name"] for row in json.loads(report.read_text())["per_image"]] == ["xca_005", "xca_006"]

    code, printed = _run(["tune", *dataset, "--split", str(split), "--part", "train",
                    "--out", str(tmp_path / "tune"), "--max-trials", "1", "--folds", "2", *tiny], capsys)
    assert code == 0, printed.err
    folds = sorted((tmp_path / "tune").rglob("fold_*/split.json"))
    assert len(folds) == 2
    assert sorted(name for fold in folds for name in json.loads(fold.read_text())["val"]) == sorted(train)

    with pytest.raises(SystemExit, match="one of --pairs, --images/--masks or --nnunet"):
        main(["evaluate", "--model", str(run / "model.keras"), *dataset, "--pairs", str(tmp_path)])


def test_finetune_rerun_with_other_settings_stops_and_keeps_the_record(pairs, tiny_model_path, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["finetune", "--pairs", str(pairs), "--out", str(run), "--base-filters", "4", "--depth", "2",
            "--patch-size", "32", "--epochs", "1", "--steps-per-epoch", "1", "--quiet"]
    assert _run(base + ["--lr", "2e-3", "--init", str(tiny_model_path)], capsys)[0] == 0
    record = {name: (run / name).read_bytes() for name in ("config.yaml", "split.json", "model.keras")}
    code, printed = _run(base + ["--lr", "5e-4"], capsys)  # the rerun: other lr, no --init
    assert code == 2 and "Traceback" not in printed.err and "resuming" not in printed.out
    *rule, error = printed.err.strip().splitlines()  # the few-label rule's line comes first
    assert all(line.startswith("few-label rule") for line in rule)
    assert error.startswith(f"error: {run}: ") and "lr 0.002 -> 0.0005" in error and "init '" in error
    assert "new --out" in error
    assert {name: (run / name).read_bytes() for name in record} == record


def _subcommands():
    from cm_unet_keras.cli import build_parser

    parser = build_parser()
    (choices,) = [action.choices for action in parser._actions if isinstance(action.choices, dict)]
    return choices


def _help_of(subparser, dest):
    (action,) = [action for action in subparser._actions if action.dest == dest and action.option_strings[0] != "--quiet"]
    return subparser._get_formatter()._expand_help(action)


def test_help_shows_each_config_default_from_the_dataclass(monkeypatch):
    import dataclasses

    from cm_unet_keras.config import PRETRAIN_RECIPES, FinetuneConfig, PretrainConfig
    from cm_unet_keras.tuning import TuneConfig

    # Defaults are read from the dataclass when the parser is built, not written twice.
    monkeypatch.setattr(FinetuneConfig.__dataclass_fields__["epochs"], "default", 37)
    commands = _subcommands()
    assert _help_of(commands["finetune"], "epochs").endswith("(default: 37)")
    checked = 0
    for command, config_class in (("finetune", FinetuneConfig), ("tune", FinetuneConfig), ("tune", TuneConfig)):
        fields = {field.name: field.default for field in dataclasses.fields(config_class)}
        for action in commands[command]._actions:
            if action.dest in fields and action.option_strings and fields[action.dest] is not None:
                value = fields[action.dest]
                shown = ("on" if value else "off") if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
                assert _help_of(commands[command], action.dest).endswith(f"(default: {shown})"), (command, action.dest)
                checked += 1
    assert checked >= 20
    epochs = _help_of(commands["pretrain"], "epochs")
    assert f"{PRETRAIN_RECIPES['cpu']['epochs']} with the cpu recipe" in epochs
    assert f"{PretrainConfig.epochs} with the paper recipe" in epochs
    # Options that have a value by default say so; none speaks of the process.
    for name, subparser in commands.items():
        text = subparser.format_help()
        assert "issue" not in text.lower(), name
        for action in subparser._actions:
            if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
                assert "default" in _help_of(subparser, action.dest), (name, action.dest)


def test_verbose_is_a_flag_with_levels_and_quiet(tmp_path):
    from cm_unet_keras.cli import build_parser

    parser = build_parser()
    base = ["finetune", "--pairs", "p", "--out", "o"]
    assert parser.parse_args(base).verbose == "auto"
    assert parser.parse_args(base + ["--verbose"]).verbose == 2
    assert parser.parse_args(base + ["--verbose", "1"]).verbose == 1
    assert parser.parse_args(base + ["--quiet"]).verbose == 0
    assert parser.parse_args(["pretrain", "--images", "i", "--out", "o", "--verbose"]).verbose == 2
    assert parser.parse_args(["tune", "--pairs", "p", "--out", "o"]).verbose == 0
    assert parser.parse_args(["tune", "--pairs", "p", "--out", "o", "--verbose"]).verbose == 2
    assert parser.parse_args(["study", "--quiet"]).verbose == 0
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--verbose", "3"])


def test_study_paths_are_explicit_or_those_of_the_source_checkout(tmp_path, monkeypatch, capsys):
    from cm_unet_keras.experiments import study

    calls = []
    monkeypatch.setattr(study, "run_study", lambda *args, **kwargs: calls.append(args) or
                        {"stage_seconds": {}, "records": [], "new_runs": 0})
    # From the source checkout: its paths, said on stderr.
    assert main(["study", "--quick", "--out", str(tmp_path / "le")]) == 0
    _, data, split, runs, out = calls.pop()
    root = Path(__file__).resolve().parents[1]
    assert (Path(data), Path(split)) == (root.parent / "shared" / "data", root / "recipes" / "xca_split.json")
    assert (runs, out) == (tmp_path / "le" / "runs", tmp_path / "le")
    err = capsys.readouterr().err
    assert f"paths of the source checkout {root}" in err and "--data" in err and "--out" not in err
    # Installed (no checkout beside the package): every path must be given.
    monkeypatch.setattr(study, "__file__", str(tmp_path / "site-packages" / "cm_unet_keras" / "study.py"))
    assert study.checkout_paths() is None
    with pytest.raises(SystemExit, match="needs --data, --split, --runs, --out"):
        main(["study"])
    paths = ["--data", "d", "--split", "s.json", "--runs", str(tmp_path / "r"), "--out", str(tmp_path / "o")]
    assert main(["study", *paths]) == 0
    assert calls.pop()[1:] == ("d", "s.json", tmp_path / "r", tmp_path / "o")
    assert "source checkout" not in capsys.readouterr().err


def test_predict_shows_a_progress_bar_over_files_and_cine_frames(tiny_model_path, shared_data, tmp_path, capsys,
                                                                 monkeypatch, xa_cine_writer):
    import sys as system

    from pydicom.uid import RLELossless

    frames = [cv2.imread(str(shared_data / "xca_vessels" / "train" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)[:64, :64]
              for n in (1, 2, 3)]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    xa_cine_writer(inputs / "run.dcm", np.stack(frames), RLELossless)
    cv2.imwrite(str(inputs / "still.png"), frames[0])
    argv = ["predict", "--model", str(tiny_model_path), "--out", str(tmp_path / "out"), str(inputs)]
    # In a log (stderr not a terminal): one line per angiogram, no bar.
    code, printed = _run(argv, capsys)
    assert code == 0 and "run_f0002: " in printed.out and "ETA" not in printed.err
    # On a terminal: the bar, one step per frame, with the time left.
    monkeypatch.setattr(system.stderr, "isatty", lambda: True)
    code, printed = _run(argv, capsys)
    assert code == 0 and "run_f0002: " not in printed.out
    steps = printed.err.split("\r")
    assert [step.split(" ")[0] for step in steps if "ETA" in step] == ["1/4", "2/4", "3/4", "4/4"]
    code, printed = _run(argv + ["--quiet"], capsys)
    assert code == 0 and "ETA" not in printed.err and "run_f0002" not in printed.out
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 4


def test_predict_reads_a_dicom_that_only_gdcm_decodes(tiny_model_path, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    # JPEG extended 12-bit with a scan header pylibjpeg refuses (as some GE scanners write it).
    source = get_testdata_file("JPEG-lossy.dcm")
    code, printed = _run(["predict", "--model", str(tiny_model_path), "--out", str(tmp_path / "out"), source], capsys)
    assert code == 0, printed.err
    mask = cv2.imread(str(tmp_path / "out" / "JPEG-lossy_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (1024, 256) and set(np.unique(mask)) <= {0, 255}
    assert "segmented 1 angiograms" in printed.out


ROOT = Path(__file__).resolve().parents[1]


def _python(code, timeout=300):
    """Run `code` in a fresh interpreter from the checkout's root (its package first)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_help_version_and_presets_import_neither_tensorflow_nor_keras():
    printed = _python(
        "import sys\n"
        "from cm_unet_keras.cli import build_parser, main\n"
        "def heavy():\n"
        "    return [name for name in ('tensorflow', 'keras') if name in sys.modules]\n"
        "parser = build_parser()\n"
        "assert heavy() == [], ('build_parser', heavy())\n"
        "(commands,) = [action.choices for action in parser._actions if isinstance(action.choices, dict)]\n"
        "runs = [['--version'], ['--help'], ['presets']] + [[name, '--help'] for name in commands]\n"
        "for argv in runs:\n"
        "    try:\n"
        "        code = main(argv)\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        "    assert code in (0, None), (argv, code)\n"
        "    assert heavy() == [], (argv, heavy())\n"
        "print('checked', len(runs))\n"
    )
    assert "cmunet_small_xca" in printed and "usage: cm-unet" in printed and "cm-unet-keras " in printed
    assert int(printed.split("checked ")[-1]) >= 14


def test_keras_imported_after_the_package_loads_a_saved_cmunet(tiny_model_path):
    # `import cm_unet_keras` is light, yet keeps its promise: Keras knows CMUNet.
    printed = _python(
        "import sys, cm_unet_keras\n"
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules\n"
        "import keras\n"
        f"model = keras.models.load_model({str(tiny_model_path)!r}, safe_mode=True)\n"
        "print(type(model).__module__, type(model).__name__, model.depth)\n"
    )
    assert printed.split() == ["cm_unet_keras.models.unet", "CMUNet", "2"]
