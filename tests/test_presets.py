"""The shipped presets (`saved_models/`): integrity, safe loading, the card's
claims recomputed on the real validation pairs, use from every CLI command,
and availability from an installed wheel with no checkout and no data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cm_unet_keras.cli import main
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.evaluation.evaluate import evaluate_model
from cm_unet_keras.experiments.data import study_data
from cm_unet_keras.models import presets
from cm_unet_keras.models.loading import load_preset
from cm_unet_keras.models.unet import HEAD_PREFIXES

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saved_models"
SPLIT = ROOT / "recipes" / "xca_split.json"
NAMES = ("cmunet_small_pretrained", "cmunet_small_xca", "cmunet_small_general", "cmunet_small_pretrained_v2",
         "cmunet_small_xca_v2", "cmunet_small_general_v2", "cmunet_small_arcade_v2", "cmunet_small_general_v3",
         "cmunet_small_arcade_v3")
# The presets published from ARCADE protocol runs, and the convention of each one's output.
PROTOCOL_PRESETS = {"cmunet_small_general_v2": "tree_catheter", "cmunet_small_arcade_v2": "syntax",
                    "cmunet_small_general_v3": "tree_catheter", "cmunet_small_arcade_v3": "syntax"}
PROTOCOL_RESULTS = ROOT / "benchmarks" / "arcade_protocol" / "results.jsonl"
CARD_KEYS = {"name", "kind", "file", "sha256", "description", "intended_use", "not_intended_for", "limitations",
             "licences", "architecture", "data", "training", "validation_metrics", "input", "rebuild"}


@pytest.mark.parametrize("name", NAMES)
def test_shipped_preset_is_small_verified_documented_and_safe(name):
    assert name in presets.available_presets(SHIPPED)
    card = presets.preset_card(name, SHIPPED)
    assert CARD_KEYS <= set(card), f"card of {name} lacks {CARD_KEYS - set(card)}"
    assert "python recipes/build_presets.py" in card["rebuild"]
    if "superseded_by" in card:  # a successor that ships, named first among the limits
        assert card["superseded_by"] in presets.available_presets(SHIPPED)
        assert card["limitations"][0].startswith(f"Superseded by {card['superseded_by']} ")
    for file in (SHIPPED / name).iterdir():
        assert file.stat().st_size <= presets.MAX_PRESET_BYTES, file
    path = presets.verified_preset_path(name, SHIPPED)
    assert presets.file_sha256(path) == card["sha256"]
    model = load_preset(name, SHIPPED)  # safe_mode=True inside
    assert (model.base_filters, model.depth) == (card["architecture"]["base_filters"], card["architecture"]["depth"])
    image = np.random.default_rng(0).normal(size=(1, 96, 80, 1)).astype("float32")
    probability = np.asarray(model(image))
    assert probability.shape == (1, 96, 80, 1) and np.all((probability >= 0) & (probability <= 1))


@pytest.mark.parametrize("name", NAMES)
def test_card_readme_is_the_card_rendered_with_intended_use_and_limits(name):
    card = presets.preset_card(name, SHIPPED)
    readme = (SHIPPED / name / "README.md").read_text()
    assert readme == presets.render_card(card), "README.md is stale: run presets.write_card_readme on the folder"
    assert "## Intended use\n\n" + card["intended_use"] in readme
    assert "Clinical decisions" in readme and "not a medical device" in readme
    for limitation in card["limitations"]:
        assert f"- {limitation}" in readme
    assert "CC BY 4.0" in card["licences"] and "BSD-3-Clause" in card["licences"] and card["licences"] in readme


@pytest.mark.parametrize("name", ["cmunet_small_xca", "cmunet_small_xca_v2"])
def test_xca_preset_reproduces_the_dice_on_its_card(shared_data, name):
    card = presets.preset_card(name, SHIPPED)
    _, validation = study_data(shared_data, SPLIT)
    report = evaluate_model(load_preset(name, SHIPPED), validation)
    for key in ("dice", "cldice", "iou"):
        assert report["mean"][key] == pytest.approx(card["validation_metrics"]["mean"][key], abs=2e-3), key
    assert report["n_images"] == 10


@pytest.mark.parametrize("name", list(PROTOCOL_PRESETS))
def test_protocol_preset_reproduces_its_card_and_its_protocol_row(shared_data, recipe_module, name):
    # CIMAT's 10 and XCAD's 2 re-scored against the card's means; 8 of
    # ARCADE's 200 validation pairs against the per-image Dice of the
    # protocol run the card names (all 200 are the benchmark's to score).
    from cm_unet_keras.experiments.store import read_jsonl

    protocol = recipe_module("arcade_protocol")
    card = presets.preset_card(name, SHIPPED)
    assert card["conventions"] == [PROTOCOL_PRESETS[name]]
    row = read_jsonl(PROTOCOL_RESULTS, lambda r: r["run"])[card["training"]["protocol_run"]]
    sources = card["validation_metrics"]["sources"]
    assert sources["arcade_val"]["images"] == 200
    assert sources["arcade_val"]["mean"]["dice"] == pytest.approx(row["mean"]["arcade_val"]["dice"], abs=1e-4)
    model = load_preset(name, SHIPPED)
    for part in ("cimat", "xcad"):
        report = evaluate_model(model, protocol.scored_records(part, shared_data))
        assert report["n_images"] == sources[part]["images"]
        assert report["mean"]["dice"] == pytest.approx(sources[part]["mean"]["dice"], abs=2e-3), part
    arcade = protocol.scored_records("arcade_val", shared_data)[:8]
    stored = {image["name"]: image["dice"] for image in row["per_image"]["arcade_val"]}
    for image in evaluate_model(model, arcade)["per_image"]:
        assert image["dice"] == pytest.approx(stored[image["name"]], abs=5e-3), image["name"]


def test_pretrained_preset_transfers_encoder_and_decoder_not_head(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(presets.ENV_VAR, str(SHIPPED))
    assert presets.is_pretrained_preset("cmunet_small_pretrained")
    assert not presets.is_pretrained_preset("cmunet_small_xca")
    out = tmp_path / "ft"
    code = main(["finetune", "--pairs", str(shared_data / "xca_vessels" / "train"), "--split", str(SPLIT),
                 "--limit", "3", "--val-fraction", "0", "--epochs", "1", "--steps-per-epoch", "2",
                 "--init", "cmunet_small_pretrained", "--out", str(out), "--verbose", "0"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "transfer_report.json").read_text())
    assert report["loaded"] and not any(name.startswith(HEAD_PREFIXES) for name in report["loaded"])
    assert any(name.startswith(HEAD_PREFIXES) for name in report["skipped"])


def test_xca_preset_in_evaluate_predict_and_export(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(presets.ENV_VAR, str(SHIPPED))
    train = shared_data / "xca_vessels" / "train"
    assert main(["evaluate", "--model", "cmunet_small_xca", "--pairs", str(train), "--split", str(SPLIT),
                 "--part", "holdout", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n_images"] == 10
    assert main(["predict", "--model", "cmunet_small_xca", "--output", str(tmp_path / "p"), str(train / "1.png")]) == 0
    assert (tmp_path / "p" / "1_mask.png").is_file()
    assert main(["export", "--model", "cmunet_small_xca", "--out", str(tmp_path / "serving"), "--name", "xca",
                 "--version", "1"]) == 0
    assert list((tmp_path / "serving").rglob("saved_model.pb"))
    capsys.readouterr()
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in NAMES) and "validation Dice" in listed
    xca_line = next(line for line in listed.splitlines() if line.strip().startswith("cmunet_small_xca "))
    assert xca_line.endswith("superseded by cmunet_small_xca_v2")


def test_write_preset_is_atomic_and_refuses_to_overwrite(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"first")
    presets.write_preset("p", [model], {"file": "model.keras", "intended_use": "tests only"}, tmp_path)
    assert presets.verified_preset_path("p", tmp_path).read_bytes() == b"first"
    card = presets.preset_card("p", tmp_path)
    readme = (tmp_path / "p" / "README.md").read_text()
    assert readme == presets.render_card(card) and "## Intended use\n\ntests only" in readme
    assert card["sha256"] in readme
    model.write_bytes(b"second")
    with pytest.raises(InvalidInputError, match="preset exists"):
        presets.write_preset("p", [model], {"file": "model.keras"}, tmp_path)
    assert presets.verified_preset_path("p", tmp_path).read_bytes() == b"first"
    presets.write_preset("p", [model], {"file": "model.keras"}, tmp_path, overwrite=True)
    assert presets.verified_preset_path("p", tmp_path).read_bytes() == b"second"
    big = tmp_path / "big.keras"
    with open(big, "wb") as stream:
        stream.truncate(presets.MAX_PRESET_BYTES + 1)
    with pytest.raises(InvalidInputError, match="16 MB"):
        presets.write_preset("q", [big], {"file": "big.keras"}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.keras", "model.keras", "p"]  # no leftovers


def test_general_preset_reproduces_its_per_source_numbers(shared_data):
    # The card holds one row per source; CIMAT's 10 and XCAD's 2 validation
    # pairs, as the benchmarks and recipes load them, are re-scored here
    # (ARCADE's 60 are left to benchmarks/cross_source.py), and `cm-unet
    # presets` reads ARCADE by its sensitivity.
    from cm_unet_keras.experiments.data import source_records

    card = presets.preset_card("cmunet_small_general", SHIPPED)
    sources = card["validation_metrics"]["sources"]
    assert set(sources) == {"cimat", "arcade", "xcad"} and sources["arcade"]["images"] == 60
    model = load_preset("cmunet_small_general", SHIPPED)
    for source in ("cimat", "xcad"):
        report = evaluate_model(model, source_records(source, shared_data, ROOT / "recipes"))
        assert report["n_images"] == sources[source]["images"]
        for key in ("dice", "sensitivity"):
            assert report["mean"][key] == pytest.approx(sources[source]["mean"][key], abs=2e-3), (source, key)
    summary = presets.validation_summary(card)
    assert f"arcade sensitivity {sources['arcade']['mean']['sensitivity']:.3f}" in summary
    assert f"xcad dice {sources['xcad']['mean']['dice']:.3f}" in summary


def test_presets_ship_inside_the_wheel(tmp_path, shared_data):
    """`pip install` of a wheel, then the presets from another folder, with no
    checkout on the path and no data folder: `from_preset` and the CLI."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("cm_unet_keras-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    angiogram = tmp_path / "angiogram.png"
    angiogram.write_bytes((shared_data / "xca_vessels" / "train" / "1.png").read_bytes())
    env = {k: v for k, v in os.environ.items() if k != presets.ENV_VAR}
    env["PYTHONPATH"] = str(site)
    script = (
        "import cm_unet_keras, sys\n"
        "from cm_unet_keras import CMUNet\n"
        "from cm_unet_keras.cli import main\n"
        f"assert cm_unet_keras.__file__.startswith({str(site)!r}), cm_unet_keras.__file__\n"
        "unet = CMUNet.from_preset('cmunet_small_pretrained')\n"
        "assert unet.base_filters == 16\n"
        "sys.exit(main(['predict', '--model', 'cmunet_small_xca', '--output', 'out', 'angiogram.png']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "angiogram_mask.png").is_file()


def test_tta_flag_reaches_evaluate_and_predict(shared_data, tmp_path, monkeypatch):
    from cm_unet_keras.data.readers import read_angiogram
    from cm_unet_keras.inference.predict import segment_angiogram

    monkeypatch.setenv(presets.ENV_VAR, str(SHIPPED))
    train = shared_data / "xca_vessels" / "train"
    model = load_preset("cmunet_small_xca", SHIPPED)
    _, validation = study_data(shared_data, SPLIT)
    assert main(["evaluate", "--model", "cmunet_small_xca", "--pairs", str(train), "--split", str(SPLIT),
                 "--part", "holdout", "--tta", "--json", str(tmp_path / "e.json")]) == 0
    dice = json.loads((tmp_path / "e.json").read_text())["mean"]["dice"]
    assert dice == pytest.approx(evaluate_model(model, validation, tta=True)["mean"]["dice"], abs=1e-6)
    assert abs(dice - evaluate_model(model, validation)["mean"]["dice"]) > 1e-5  # the flips were averaged
    # float32: the exact path `expected` takes (auto is bfloat16 on AVX512_BF16 CPUs)
    assert main(["predict", "--model", "cmunet_small_xca", "--tta", "--precision", "float32",
                 "--output", str(tmp_path / "p"), str(train / "1.png")]) == 0
    written = cv2.imread(str(tmp_path / "p" / "1_prob.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    expected = segment_angiogram(model, read_angiogram(train / "1.png"), tta=True) * 255.0
    assert np.abs(written - expected).max() <= 0.51


def test_a_protocol_run_is_published_as_the_general_v2_preset_with_its_scored_numbers(
        shared_data, tmp_path, recipe_module, capsys):
    from cm_unet_keras.config import FinetuneConfig, write_recipe
    from cm_unet_keras.experiments.store import append_jsonl

    build = recipe_module("build_presets")
    protocol = recipe_module("arcade_protocol")
    # A run folder as arcade_protocol leaves it (a real model, its recipe), scored on real frames of each part.
    run = tmp_path / "runs" / "w16_s4000_p384b2_scratch"
    run.mkdir(parents=True)
    (run / "model.keras").write_bytes((SHIPPED / "cmunet_small_xca" / "model.keras").read_bytes())
    write_recipe(FinetuneConfig(patch_size=384, batch_size=2, epochs=40, steps_per_epoch=100), run / "config.yaml")
    model = load_preset("cmunet_small_xca", SHIPPED)
    reports = {part: evaluate_model(model, protocol.scored_records(part, shared_data)[:2]) for part in protocol.SCORED}
    row = {"run": run.name, "base_filters": 16, "depth": 4, "patch_size": 384, "batch_size": 2, "steps": 4000,
           "init": None, "conventions": None, "seed": 0, "train_seconds": 1367.2,
           "machine": "x86_64, 2 CPUs, precision mixed_bfloat16", "note": "",
           "mean": {part: r["mean"] for part, r in reports.items()},
           "std": {part: r["std"] for part, r in reports.items()},
           "per_image": {part: r["per_image"] for part, r in reports.items()}}
    results = tmp_path / "results.jsonl"
    root = tmp_path / "saved_models"

    with pytest.raises(InvalidInputError, match="not a scored run"):
        build.build_protocol_preset(build.GENERAL_V2, run, root, False, results=results)
    append_jsonl(results, {**row, "run": "other"})
    append_jsonl(results, {**row, "conventions": ["syntax", "tree", "tree_catheter"]})
    with pytest.raises(InvalidInputError, match="one output per convention"):
        build.build_protocol_preset(build.GENERAL_V2, run, root, False, results=results)
    append_jsonl(results, row)  # the last row of a run wins, as the protocol's reader keeps it
    # Another seed of the same setting is named on the card; a longer run of another setting is not.
    other_seed = {**row["mean"], "arcade_val": {**row["mean"]["arcade_val"], "dice": 0.5}}
    append_jsonl(results, {**row, "run": run.name + "_seed1", "seed": 1, "mean": other_seed})
    append_jsonl(results, {**row, "run": "w16_s8000_p384b2_scratch_seed2", "seed": 2, "steps": 8000})
    with pytest.raises(InvalidInputError, match="publish it as cmunet_small_general_v2"):
        build.build_protocol_preset(build.ARCADE_V2, run, root, False, results=results)
    card_path = build.build_protocol_preset(build.GENERAL_V2, run, root, False, results=results,
                                            failure_modes="It misses X on 1 of 2.")

    card = json.loads(card_path.read_text())
    sources = card["validation_metrics"]["sources"]
    for part, report in reports.items():
        assert sources[part]["images"] == 2
        assert sources[part]["mean"]["dice"] == pytest.approx(report["mean"]["dice"], abs=1e-4)
    assert "It misses X on 1 of 2." in card["limitations"]
    seeds = next(line for line in card["limitations"] if line.startswith("One run of seed 0"))
    ours = reports["arcade_val"]["mean"]["dice"]
    assert f"its setting's 2 seeds scored ARCADE validation Dice {ours:.3f} (seed 0), 0.500 (seed 1): mean " \
           f"{(ours + 0.5) / 2:.3f}" in seeds and "seed 2" not in seeds
    assert card["conventions"] == ["tree_catheter"] and "unlabeled" not in card["data"]
    assert "--patch-size 384 --batch-size 2 --steps 4000 --seed 0" in card["rebuild"]
    assert "--sources" not in card["rebuild"] and "--only general_v2 --protocol-run" in card["rebuild"]
    assert card["rebuild"].endswith(f"{run.name} --failure-modes benchmarks/failure_modes/{run.name}_card.txt")
    assert presets.verified_preset_path("cmunet_small_general_v2", root).read_bytes() == (run / "model.keras").read_bytes()
    # `cm-unet presets` reads ARCADE by the protocol's metric, Dice, not sensitivity.
    summary = presets.validation_summary(card)
    assert f"arcade_val dice {reports['arcade_val']['mean']['dice']:.3f}" in summary
    with pytest.raises(InvalidInputError, match="preset exists"):
        build.build_protocol_preset(build.GENERAL_V2, run, root, False, results=results)

    # A run on ARCADE's pairs alone is the syntax-convention preset, and only that one.
    alone = run.with_name("w16_s4000_p384b2_scratch_arcadeonly")
    alone.mkdir()
    for file in ("model.keras", "config.yaml"):
        (alone / file).write_bytes((run / file).read_bytes())
    append_jsonl(results, {**row, "run": alone.name, "sources": "arcade", "init": "/work/runs/pretrain_arcade"})
    with pytest.raises(InvalidInputError, match="publish it as cmunet_small_arcade_v2"):
        build.build_protocol_preset(build.GENERAL_V2, alone, tmp_path / "other", False, results=results)
    card = json.loads(build.build_protocol_preset(build.ARCADE_V2, alone, root, False, results=results).read_text())
    assert card["conventions"] == ["syntax"] and "labelled" not in card["data"] and "unlabeled" in card["data"]
    assert any(line.startswith("One run of seed 0: a second seed") for line in card["limitations"])  # alone in it
    assert card["rebuild"].startswith("python recipes/arcade_protocol.py") and "--init runs/pretrain_arcade" in card["rebuild"]
    assert "--sources arcade && python recipes/build_presets.py --only arcade_v2 --protocol-run" in card["rebuild"]
    assert "every patch" in card["data"]["partially_labelled"]
    from cm_unet_keras.models.segmentation import convention_model, load_preset as load_with_settings

    unet = load_with_settings(str(presets.verified_preset_path(build.ARCADE_V2, root)))
    assert unet.segmentation_settings.convention == "syntax" and convention_model(unet, "syntax") is unet
    with pytest.raises(ValueError, match="not one of"):
        convention_model(unet, "tree")

    # A longer run on the same sources is published as v3, which names itself on v2's card; v2's model stays.
    v2_model = presets.verified_preset_path(build.ARCADE_V2, root).read_bytes()
    longer = run.with_name("w16_s8000_p384b4_pretrained_arcadeonly")
    longer.mkdir()
    (longer / "model.keras").write_bytes((run / "model.keras").read_bytes())
    write_recipe(FinetuneConfig(patch_size=384, batch_size=4, epochs=80, steps_per_epoch=100,
                                init="/work/runs/pretrain_arcade"), longer / "config.yaml")
    better = {**row["mean"], "arcade_val": {**row["mean"]["arcade_val"], "dice": 0.9}}
    append_jsonl(results, {**row, "run": longer.name, "sources": "arcade", "steps": 8000, "batch_size": 4,
                           "init": "/work/runs/pretrain_arcade", "mean": better})
    with pytest.raises(InvalidInputError, match="publish it as cmunet_small_arcade_v2 or cmunet_small_arcade_v3"):
        build.build_protocol_preset(build.GENERAL_V2, longer, tmp_path / "other", False, results=results)
    card = json.loads(build.build_protocol_preset(build.ARCADE_V3, longer, root, False, results=results).read_text())
    assert card["training"]["finetune_config"]["init"] == "runs/pretrain_arcade"  # no machine's absolute path
    assert "8,000 steps of 4 x 384 px native-resolution patches" in card["description"]
    assert card["rebuild"].endswith(longer.name)  # no failure modes looked at, none to rebuild with
    old = presets.preset_card(build.ARCADE_V2, root)
    assert old["superseded_by"] == build.ARCADE_V3
    assert old["limitations"][0] == (
        "Superseded by cmunet_small_arcade_v3 (issue 31): cmunet_small_arcade_v3 is trained by the same protocol "
        "on the same sources for 8,000 steps of 4 x 384 px patches and scores validation Dice ARCADE 0.900 against "
        f"its {ours:.3f}. It stays only so that results made with it can be reproduced.")
    assert sum(line.startswith("Superseded by") for line in old["limitations"]) == 1
    assert (root / build.ARCADE_V2 / "README.md").read_text() == presets.render_card(old)
    assert presets.verified_preset_path(build.ARCADE_V2, root).read_bytes() == v2_model  # its SHA-256 checked too
    # Published again, the successor's line replaces the old one rather than stacking.
    build.build_protocol_preset(build.ARCADE_V3, longer, root, True, results=results)
    old = presets.preset_card(build.ARCADE_V2, root)
    assert sum(line.startswith("Superseded by") for line in old["limitations"]) == 1
    # The general successor names every source's Dice on its predecessor's card, and points the syntax
    # presets' users to itself.
    # A source where it falls below its predecessor is named on its own card.
    general = run.with_name("w16_s8000_p384b4_pretrained")
    general.mkdir()
    for file in ("model.keras", "config.yaml"):
        (general / file).write_bytes((run / file).read_bytes())
    cimat, xcad = reports["cimat"]["mean"]["dice"], reports["xcad"]["mean"]["dice"]
    worse = {**row["mean"], "xcad": {**row["mean"]["xcad"], "dice": xcad - 0.05}}
    append_jsonl(results, {**row, "run": general.name, "steps": 8000, "batch_size": 4, "mean": worse})
    card = json.loads(build.build_protocol_preset(build.GENERAL_V3, general, root, False, results=results).read_text())
    assert "--only general_v3 --protocol-run" in card["rebuild"] and card["conventions"] == ["tree_catheter"]
    assert f"Below cmunet_small_general_v2, which it replaces, on XCAD ({xcad - 0.05:.3f} against {xcad:.3f}, 2 " \
           "images): " in "\n".join(card["limitations"])
    arcade = presets.preset_card(build.ARCADE_V3, root)
    assert not any(line.startswith("Below cmunet") for line in arcade["limitations"])
    old = presets.preset_card(build.GENERAL_V2, root)
    assert old["superseded_by"] == build.GENERAL_V3 and old["limitations"][0].startswith(
        f"Superseded by cmunet_small_general_v3 (issue 31): cmunet_small_general_v3 is trained by the same protocol "
        f"on the same sources for 8,000 steps of 4 x 384 px patches and scores validation Dice ARCADE {ours:.3f} "
        f"against its {ours:.3f}, CIMAT {cimat:.3f} against its {cimat:.3f}, XCAD {xcad - 0.05:.3f} against its "
        f"{xcad:.3f}.")
    arcade = presets.preset_card(build.ARCADE_V3, root)
    assert arcade["intended_use"].endswith("for every visible vessel use cmunet_small_general_v3.")


def test_the_pretrained_v2_card_pairs_its_starts_with_random_ones_of_the_same_shape_and_seed(recipe_module):
    build = recipe_module("build_presets")

    def row(name, init, seed, arcade, patch=384, steps=4000):
        scores = {"arcade_val": {"dice": arcade}, "cimat": {"dice": 0.74}, "xcad": {"dice": 0.70}}
        return name, {"run": name, "base_filters": 16, "depth": 4, "patch_size": patch, "batch_size": 2,
                      "steps": steps, "seed": seed, "init": init, "conventions": None, "mean": scores}

    rows = dict([row("pre0", "/runs/pretrain_arcade", 0, 0.70), row("scr0", None, 0, 0.68),
                 row("pre1", "/runs/pretrain_arcade", 1, 0.66), row("scr1", None, 1, 0.67),
                 row("scr1_256", None, 1, 0.60, patch=256), row("other", "/runs/pretrain_old", 0, 0.50)])
    pairs = build.ablation_rows(rows, "runs/pretrain_arcade")
    assert [(seed, a["run"], b["run"]) for seed, a, b in pairs] == [(0, "pre0", "scr0"), (1, "pre1", "scr1")]
    text = build.ablation_summary(rows, "runs/pretrain_arcade")
    assert "paired over seeds +0.005 (per seed +0.020, -0.010)" in text and "seeds (0, 1)" in text
    assert "unmeasured" in build.ablation_summary(rows, "runs/pretrain_new")
    # A second setting (ARCADE's pairs alone) gets its own sentence, not a share of the first's mean.
    name, alone = row("pre0_alone", "/runs/pretrain_arcade", 0, 0.74)
    rows.update({name: {**alone, "sources": "arcade"}, "scr0_alone": {**row("scr0_alone", None, 0, 0.72)[1],
                                                                      "sources": "arcade"}})
    text = build.ablation_summary(rows, "runs/pretrain_arcade")
    assert "paired over seeds +0.005 (per seed +0.020, -0.010)" in text
    assert "on ARCADE's pairs alone (2 x 384 px patches, 4,000 steps)" in text and "seeds (0): ARCADE" in text
    assert "paired over seeds +0.020 (per seed +0.020)" in text


def test_the_ablation_pairs_only_runs_that_differ_by_their_start(recipe_module):
    build = recipe_module("build_presets")
    scores = {part: {"dice": 0.7} for part in ("arcade_val", "cimat", "xcad")}
    old = {"run": "w16_s4000_scratch", "base_filters": 16, "steps": 4000, "seed": 0, "init": None,
           "conventions": None, "mean": scores}  # an early row: the protocol's default network and patches
    pretrained = {**old, "run": "pre", "init": "/runs/pretrain_arcade"}
    arcade_alone = {**old, "run": "alone", "sources": "arcade", "depth": 4, "patch_size": 128, "batch_size": 8}
    rows = {row["run"]: row for row in (old, pretrained, arcade_alone)}
    assert [(a["run"], b["run"]) for _, a, b in build.ablation_rows(rows, "pretrain_arcade")] == \
        [("pre", "w16_s4000_scratch")]
