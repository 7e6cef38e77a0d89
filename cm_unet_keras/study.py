"""The label-efficiency study: how much Dice each initialisation keeps with few labels.

Issue 4's recipe, shared by `recipes/label_efficiency.py` and `cm-unet study`.

Stage 1 (`run_pretraining`) pretrains three variants of the same code on the
unlabeled pool (ARCADE, all splits, plus the XCA training images without
their masks): `cmunet` (both losses), `mae_only` (ct_weight 0) and
`contrastive_only` (rc_weight 0). Each is an ordinary `pretrain` run folder,
so an interrupted stage resumes and a finished one is not redone.

Stage 2 (`run_sweep`) fine-tunes, for every N in `n_labels` and seed in
`seeds`, from each init in `inits` (`scratch` or a pretraining variant),
with one shared `FinetuneConfig`. A seed draws the N labelled pairs (a
prefix of one seeded permutation of the 30 training pairs, so the subsets
are nested: 3 of seed s are among its 10, which are among its 30) and seeds
the initialisation. Every run trains on all its N pairs for the fixed
budget and keeps the LAST epoch (issue 12): picking a checkpoint on 20% of
the run's own pairs meant choosing on 2 images at N=10 and 1 at N=3, a
noisier choice than none, and cost those pairs to training. The 10 reported
(holdout) pairs are never seen by training, selection or the Frangi tuning.

A Frangi vesselness filter (scikit-image, `black_ridges=True`: vessels are
dark) is the classical reference: its scales and threshold are grid-searched
for the best mean Dice on the same N training pairs, per N and seed.

Every finished run appends one record to `results.jsonl` in the runs folder;
a restarted sweep skips the runs found there. `write_results` turns the
records into `results.json`, `results.md` and `dice_vs_labels.png`.

Runs folder:
    pretrain/<variant>/       `pretrain` run folders
    sweep/<init>_n<N>_s<seed>/  `finetune` run folders (+ holdout.json)
    results.jsonl             one record per finished run (resume)
    split.json                the 30 / 10 split used (copied from the split file)
"""

import copy
import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from cm_unet_keras.config import INITS, PRETRAIN_RECIPES, FinetuneConfig, PretrainConfig, StudyConfig, build_config
from cm_unet_keras.core.files import json_safe
from cm_unet_keras.data.layouts import index_pairs, index_unlabeled, read_pair
from cm_unet_keras.data.splits import select_part
from cm_unet_keras.evaluation.metrics import METRIC_KEYS, segmentation_metrics, summarize

PRETRAINED_INITS = {
    "cmunet": {"rc_weight": 1.0, "ct_weight": 1.0},
    "mae_only": {"rc_weight": 1.0, "ct_weight": 0.0},
    "contrastive_only": {"rc_weight": 0.0, "ct_weight": 1.0},
}
FRANGI = "frangi"
RESULTS_JSONL = "results.jsonl"

# The paper (Challier et al. 2025, table of its label study), private FAME2 data: test Dice at ~500 labels
# and at 18 labels, and the relative drop. contrastive_only has no exact
# counterpart; MoCo v2 is the paper's purely contrastive method.
PAPER = {
    "scratch": ("none (scratch)", 0.708, 0.375, 0.470),
    "cmunet": ("CM-UNet", 0.738, 0.627, 0.150),
    "mae_only": ("MAE (U-Net)", 0.705, 0.449, 0.363),
    "contrastive_only": ("MoCo v2 (nearest: contrastive only)", 0.710, 0.556, 0.217),
}


def cpu_config():
    """The study on 2 CPU cores: issue 13's pretraining, converged fine-tuning.

    Pretraining (each variant): the built-in `cpu` recipe
    (`recipes/pretrain_cpu.yaml`): a 16-wide, 4-level U-Net on 128 px
    "crops" views (two overlapping crops, intensity jitter, blur) from a
    256 px working size, batch 32, lr 1e-3, 125 epochs of 48 steps (6,000
    steps; about 55 minutes a variant at 0.55 s/step on the 2-core
    AVX512_BF16 build machine).
    Fine-tuning: the `FinetuneConfig` defaults (batch 8 of 128 px patches,
    AdamW 2e-3, warm-up + cosine, Dice + BCE, all N pairs train, last epoch
    kept), the same for every init: 2,000 steps at N = 3 and 10 and 4,000 at
    N = 30, where 2,000 are not converged (scratch +0.016, pretrained +0.006
    from 2,000 to 4,000; `benchmarks/finetune_budget/results.md`).
    Seeds 0-2, and 0-4 at N = 3 (its subsets spread the most). Inits:
    `cmunet`, `scratch`, `mae_only` and Frangi (`contrastive_only` runs with
    `--inits`). 33 fine-tunes, 84,000 steps: about 5.4 hours at the
    0.23 s/step measured here, over the 3 hours the study is sized for
    (the step is the cost; issue 17 is the lever).
    """
    pretrain = build_config(PretrainConfig, ("cpu", PRETRAIN_RECIPES["cpu"]))
    finetune = FinetuneConfig(base_filters=16, depth=4)
    return StudyConfig(pretrain=pretrain, finetune=finetune, seeds_by_n={3: (0, 1, 2, 3, 4)},
                       steps_by_n={30: 4000}, inits=("cmunet", "scratch", "mae_only"))


def gpu_paper_config():
    """The paper's sizes, for a GPU: width 64, batch 256 and 300 epochs of
    pretraining on 224 px views (the paper pretrains at 224 and fine-tunes
    at 256), fine-tuning on 256 px patches with Adam-like 1e-3, batch 32,
    128 epochs (the paper's fine-tuning)."""
    pretrain = PretrainConfig(base_filters=64, depth=4, image_size=224, working_size=256,
                              batch_size=256, epochs=300, warmup_epochs=40)
    finetune = FinetuneConfig(base_filters=64, depth=4, patch_size=256, batch_size=32,
                              epochs=128, steps_per_epoch=10, lr=1e-3)
    return StudyConfig(pretrain=pretrain, finetune=finetune)


def quick_config():
    """A smoke test: 2-level, 4-wide U-Nets, one epoch of two steps, N in {2, 3},
    one seed, inits cmunet and scratch (the ablations run the same code with
    other loss weights), 8 unlabeled images, 3 reported pairs."""
    pretrain = PretrainConfig(
        base_filters=4, depth=2, image_size=32, working_size=64, batch_size=4, lr=1e-3,
        epochs=1, warmup_epochs=1, steps_per_epoch=1, projection_dim=16, grid_every=1,
    )
    finetune = FinetuneConfig(base_filters=4, depth=2, epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32)
    return StudyConfig(
        pretrain=pretrain, finetune=finetune, n_labels=(2, 3), seeds=(0,), inits=("cmunet", "scratch"),
        frangi_sigma_sets=((1, 2), (1, 2, 3)), frangi_thresholds=(0.02, 0.05, 0.1, 0.2),
        max_unlabeled=8, max_holdout=3,
    )


STUDY_PRESETS = {"cpu": cpu_config, "quick": quick_config, "gpu_paper": gpu_paper_config}


def study_config(preset="cpu", seeds=None, n_labels=None, inits=None):
    """The study of a preset (`cpu`, `quick` or `gpu_paper`), with other
    seeds, numbers of labels or inits where given. Seeds given hold for
    every N: they replace the preset's seeds by N."""
    config = STUDY_PRESETS[preset]()
    if seeds:
        config.seeds, config.seeds_by_n = tuple(seeds), {}
    if n_labels:
        config.n_labels = tuple(n_labels)
    if inits:
        config.inits = tuple(inits)
    return config


# --- data -----------------------------------------------------------------------
def study_data(data_root, split_path, max_holdout=None):
    """(train, holdout) labelled records of `xca_vessels/train` by the split file."""
    records = index_pairs(Path(data_root) / "xca_vessels" / "train", mask_suffix="_gt")
    train, holdout = select_part(records, split_path, "train"), select_part(records, split_path, "holdout")
    return train, holdout[:max_holdout] if max_holdout else holdout


def unlabeled_pool(data_root, train_records):
    """ARCADE (all splits; its masks/ and annotations/ are skipped) plus the
    XCA training angiograms without their masks. The holdout is left out."""
    return index_unlabeled([Path(data_root) / "arcade_stenosis"] + [r.image_path for r in train_records])


def labelled_subset(train_records, n_labels, seed):
    """The first `n_labels` of a `seed` permutation: nested across N per seed."""
    if not 1 <= n_labels <= len(train_records):
        raise ValueError(f"n_labels {n_labels} must be between 1 and {len(train_records)}")
    order = np.random.default_rng(seed).permutation(len(train_records))
    return sorted((train_records[i] for i in order[:n_labels]), key=lambda r: r.name)


def run_config(study, init, n_labels, seed, pretrain_dir):
    """The `FinetuneConfig` of one sweep run: the shared budget, this run's seed and
    init; all N pairs train and the last epoch is kept, whatever N."""
    config = copy.deepcopy(study.finetune)
    config.seed = seed
    if n_labels in study.steps_by_n:
        config.epochs = max(1, study.steps_by_n[n_labels] // config.steps_per_epoch)
    config.init = None if init == "scratch" else str(Path(pretrain_dir) / init)
    config.val_fraction, config.select = 0.0, "last"
    return config


# --- stage 1 --------------------------------------------------------------------
def run_pretraining(study, data_root, split_path, runs_dir, log=print, verbose=2):
    """Pretrain (or resume, or skip) each pretraining variant in `study.inits`.

    Returns:
        {variant: {"run_dir", "epochs_done", "seconds"}}; `seconds` is the
        training time summed over the epochs, whatever call ran them.
    """
    from cm_unet_keras.training.pretrain import pretrain

    train, _ = study_data(data_root, split_path)
    pool = unlabeled_pool(data_root, train)
    done = {}
    for variant in [i for i in study.inits if i in PRETRAINED_INITS]:
        config = dataclasses.replace(study.pretrain, **PRETRAINED_INITS[variant], max_images=study.max_unlabeled)
        run_dir = Path(runs_dir) / "pretrain" / variant
        log(f"pretraining {variant} on {len(pool)} unlabeled angiograms -> {run_dir}")
        result = pretrain(config, pool, run_dir, log=log, verbose=verbose)
        done[variant] = {
            "run_dir": str(run_dir),
            "epochs_done": result["epochs_done"],
            "seconds": float(sum(row["seconds"] for row in result["history"])),
        }
    return done


# --- Frangi ---------------------------------------------------------------------
def frangi_vesselness(angiogram, sigmas):
    """Frangi vesselness of dark vessels, scaled to [0, 1], under the U-Nets' rules.

    The filter sees the angiogram as the U-Nets do (z-scored inside the field
    of view, 0 outside, `preprocess_angiogram`) and its response is cleared
    outside the same `prediction_region` as theirs (issue 12: one
    field-of-view rule for every method in the study).
    """
    from skimage.filters import frangi

    from cm_unet_keras.data.normalize import prediction_region
    from cm_unet_keras.data.pipeline import preprocess_angiogram

    normalized, fov = preprocess_angiogram(np.asarray(angiogram, np.float32), return_fov=True)
    response = frangi(normalized[..., 0], sigmas=list(sigmas), black_ridges=True)
    response = response * prediction_region(fov).numpy()[..., 0]
    return response / max(float(response.max()), 1e-12)


def tune_frangi(records, sigma_sets, thresholds):
    """Grid-search Frangi scales and threshold for the best mean Dice on `records`.

    Returns:
        {"sigmas", "threshold", "train_dice"}.
    """
    from cm_unet_keras.evaluation.metrics import dice

    pairs = [read_pair(record) for record in records]
    best = {"sigmas": None, "threshold": None, "train_dice": -1.0}
    for sigmas in sigma_sets:
        responses = [frangi_vesselness(angiogram, sigmas) for angiogram, _ in pairs]
        for threshold in thresholds:
            score = float(np.mean([dice(r >= threshold, m) for r, (_, m) in zip(responses, pairs)]))
            if score > best["train_dice"]:
                best = {"sigmas": list(sigmas), "threshold": float(threshold), "train_dice": score}
    return best


def evaluate_frangi(params, records):
    """An `evaluate_model`-style report of the tuned Frangi filter on `records`."""
    per_image = []
    for record in records:
        angiogram, vessel_mask = read_pair(record)
        prediction = frangi_vesselness(angiogram, params["sigmas"]) >= params["threshold"]
        per_image.append({"name": record.name, **segmentation_metrics(prediction, vessel_mask)})
    report = summarize(per_image)
    report["per_image"] = per_image
    return report


# --- stage 2 --------------------------------------------------------------------
def run_key(init, n_labels, seed):
    return f"{init}_n{n_labels}_s{seed}"


def read_records(runs_dir):
    """Finished runs of `results.jsonl`, by key (a torn last line is ignored)."""
    path = Path(runs_dir) / RESULTS_JSONL
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            records[run_key(record["init"], record["n_labels"], record["seed"])] = record
    return records


def append_record(runs_dir, record):
    with open(Path(runs_dir) / RESULTS_JSONL, "a") as stream:
        stream.write(json.dumps(json_safe(record)) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def sweep_plan(study):
    """(init, n_labels, seed) of every run, Frangi first (it takes seconds)."""
    inits = ([FRANGI] if study.frangi else []) + list(study.inits)
    return [(init, n, seed) for n in study.n_labels for seed in study_seeds(study, n) for init in inits]


def study_seeds(study, n_labels):
    """The seeds of N = `n_labels`."""
    return tuple(study.seeds_by_n.get(n_labels, study.seeds))


def run_sweep(study, data_root, split_path, runs_dir, log=print, verbose=2):
    """Run every sweep run not yet in `results.jsonl`; return all records.

    Returns:
        (records in plan order, number of runs done by this call).
    """
    from cm_unet_keras.evaluation.evaluate import evaluate_model, write_report
    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.training.finetune import finetune

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    train, holdout = study_data(data_root, split_path, study.max_holdout)
    finished = read_records(runs_dir)
    new = 0
    for init, n_labels, seed in sweep_plan(study):
        key = run_key(init, n_labels, seed)
        if key in finished:
            continue
        if init in PRETRAINED_INITS and not (runs_dir / "pretrain" / init / "pretrained.weights.h5").is_file():
            raise FileNotFoundError(f"no pretraining of {init} in {runs_dir / 'pretrain'}: run --stage pretrain first")
        subset = labelled_subset(train, n_labels, seed)
        started = time.perf_counter()
        run_dir = runs_dir / "sweep" / key
        if init == FRANGI:
            params = tune_frangi(subset, study.frangi_sigma_sets, study.frangi_thresholds)
            report = evaluate_frangi(params, holdout)
            extra = {"selection": "grid search on the N training pairs", "frangi": params}
        else:
            config = run_config(study, init, n_labels, seed, runs_dir / "pretrain")
            fit = finetune(config, subset, run_dir, log=log, verbose=verbose)
            report = evaluate_model(load_model(fit["model_path"]), holdout, threshold=config.threshold)
            extra = {"selection": "last epoch of the fixed budget", "best_epoch": fit["best_epoch"], "n_train": fit["n_train"],
                     "n_val": fit["n_val"], "best_val_dice": fit["best_val_dice"]}
        write_report(report, run_dir / "holdout.json")
        record = {
            "init": init, "n_labels": n_labels, "seed": seed,
            "metrics": report["mean"], "metrics_std": report["std"], "n_holdout": report["n_images"],
            "labelled": [r.name for r in subset], "seconds": time.perf_counter() - started, **extra,
        }
        append_record(runs_dir, record)
        finished[key] = record
        new += 1
        log(f"{key}: holdout Dice {record['metrics']['dice']:.4f} ({record['seconds']:.0f} s)")
    ordered = [finished[run_key(*run)] for run in sweep_plan(study) if run_key(*run) in finished]
    return ordered, new


# --- results --------------------------------------------------------------------
def _by_cell(records, key="dice"):
    """{(init, n): [value per seed]} with missing values left out."""
    cells = {}
    for record in records:
        value = record["metrics"].get(key)
        if value is not None and math.isfinite(value):
            cells.setdefault((record["init"], record["n_labels"]), []).append(value)
    return cells


def relative_drop(records, init, n_high, n_low):
    """(Dice(n_high) - Dice(n_low)) / Dice(n_high) of the seed means, or None."""
    cells = _by_cell(records)
    high, low = cells.get((init, n_high)), cells.get((init, n_low))
    if not high or not low or np.mean(high) <= 0:
        return None
    return float((np.mean(high) - np.mean(low)) / np.mean(high))


def relative_drop_interval(records, init, n_high, n_low, level=0.95, resamples=10000, seed=0):
    """Percentile bootstrap interval of `relative_drop`: the seeds of each N
    are resampled with replacement, independently. None below 2 seeds a side."""
    cells = _by_cell(records)
    high, low = cells.get((init, n_high)), cells.get((init, n_low))
    if not high or not low or len(high) < 2 or len(low) < 2:
        return None
    rng = np.random.default_rng(seed)
    high_means = rng.choice(high, size=(resamples, len(high))).mean(axis=1)
    low_means = rng.choice(low, size=(resamples, len(low))).mean(axis=1)
    drops = (high_means - low_means) / high_means
    tail = (1.0 - level) / 2.0
    return float(np.quantile(drops, tail)), float(np.quantile(drops, 1.0 - tail))


def mean_interval(values, level=0.95):
    """(mean, low, high): Student-t interval of the mean; None bounds below 2 values."""
    values = np.asarray(values, float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2.0, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, mean - half, mean + half


def _spread(values):
    """'mean +- sample sd' (just the mean for one value)."""
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def write_results(records, out_dir, stage_seconds=None, command="", study=None):
    """`results.json`, `results.md` and `dice_vs_labels.png` in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(json_safe(list(records)), indent=2) + "\n")
    (out_dir / "results.md").write_text(results_markdown(records, stage_seconds or {}, command, study))
    plot_dice_vs_labels(records, out_dir / "dice_vs_labels.png")


def _inits_in(records):
    order = [FRANGI] + list(INITS)
    present = {r["init"] for r in records}
    return [i for i in order if i in present] + sorted(present - set(order))


def paired_differences(records, init, reference="scratch", key="dice"):
    """{N: [metric(init) - metric(reference) per seed]}: the runs of a seed share
    their labelled subset, so the difference removes the subset's luck."""
    by_run = {(r["init"], r["n_labels"], r["seed"]): r["metrics"].get(key) for r in records}
    differences = {}
    for (name, n, seed), value in by_run.items():
        other = by_run.get((reference, n, seed))
        if name == init and value is not None and other is not None:
            differences.setdefault(n, []).append(value - other)
    return differences


def _budget_lines(study):
    if study is None:
        return []
    p, f = study.pretrain, study.finetune
    return [
        f"Pretraining (each variant): U-Net width {p.base_filters}, {p.depth} levels; {p.image_size} px views from a "
        f"{p.working_size} px working size, \"{p.views}\" views; batch {p.batch_size}; {p.epochs} epochs x "
        f"{p.steps_per_epoch} steps; peak lr {p.peak_lr():g}; mask {p.mask_ratio:.0%} of {p.patch_size} px patches; "
        f"tau {p.temperature}; EMA {p.ema_momentum}.",
        f"Fine-tuning (every run, every init): {f.epochs * f.steps_per_epoch} steps"
        + "".join(f", {steps} at N = {n}" for n, steps in sorted(study.steps_by_n.items()))
        + f"; batch {f.batch_size} of {f.patch_size} px patches; AdamW lr {f.lr:g}, weight decay "
        f"{f.weight_decay:g}; Dice weight {f.dice_weight}; precision {f.precision}.",
    ]


def results_markdown(records, stage_seconds, command="", study=None):
    ns = sorted({r["n_labels"] for r in records})
    inits = _inits_in(records)
    n_high, n_low = (ns[-1], ns[0]) if ns else (None, None)
    seeds = sorted({r["seed"] for r in records})
    holdout = sorted({r.get("n_holdout") for r in records} - {None})
    from cm_unet_keras.training.runtime import resolve_precision

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
               f"precision auto = {resolve_precision('auto')} there")
    lines = [
        "# Label efficiency on XCA angiograms (CIMAT), by initialisation",
        "",
        f"Reported on the {holdout or '?'} validation pairs of `recipes/xca_split.json` (never used for",
        f"training, selection or tuning); mean +- sample sd over seeds ({seeds}) of each run's mean over",
        "those pairs. A seed draws N labelled pairs from the 30 training pairs (nested: its 3 are among",
        "its 10, among its 30) and seeds the initialisation; every run trains on all N and keeps the last",
        "epoch.",
        f"Machine: {machine}." + (f" Command: `{command}`" if command else ""),
        *_budget_lines(study),
        "",
        "## Dice",
        "",
        "| init | " + " | ".join(f"N={n}" for n in ns)
        + f" | drop N={n_high} -> {n_low} [95% interval] | paper: ~500 -> 18 labels (drop) |",
        "|---|" + "---|" * len(ns) + "---|---|",
    ]
    cells = _by_cell(records)
    for init in inits:
        row = [f"{_spread(v)} ({len(v)})" if (v := cells.get((init, n))) else "-" for n in ns]
        drop = relative_drop(records, init, n_high, n_low)
        interval = relative_drop_interval(records, init, n_high, n_low)
        drop_text = "-" if drop is None else f"{drop:.1%}" + (
            f" [{interval[0]:.1%}, {interval[1]:.1%}]" if interval else "")
        paper = PAPER.get(init)
        paper_text = f"{paper[0]}: {paper[1]:.3f} -> {paper[2]:.3f} ({paper[3]:.1%})" if paper else "-"
        lines.append(f"| {init} | " + " | ".join(row) + f" | {drop_text} | {paper_text} |")
    lines += [
        "",
        "(n) is the number of seeds. The drop's interval is a percentile bootstrap over seeds, each N",
        "resampled on its own.",
    ]
    lines += [
        "",
        "The paper's figures are test Dice on private FAME2 data (one split, one seed, ~1,700 unlabeled",
        "images, full-size U-Net): a different dataset, so compare the drops, not the Dice values.",
        "",
    ]
    if "scratch" in inits:
        lines += [
            "## Paired difference from scratch (Dice, same subset and seed)",
            "",
            "Mean difference [Student-t 95% interval] (seeds where the init beats scratch / seeds).",
            "",
            "| init | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---|" + "---|" * len(ns),
        ]
        for init in [i for i in inits if i != "scratch"]:
            diffs = paired_differences(records, init)
            row = []
            for n in ns:
                d = diffs.get(n)
                if not d:
                    row.append("-")
                    continue
                mean, low, high = mean_interval(d)
                bounds = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
                row.append(f"{mean:+.3f}{bounds} ({sum(x > 0 for x in d)}/{len(d)})")
            lines.append(f"| {init} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "## All metrics (mean +- sample sd over seeds)",
        "",
        "| init | N | " + " | ".join(METRIC_KEYS) + " |",
        "|---|---|" + "---|" * len(METRIC_KEYS),
    ]
    for init in inits:
        for n in ns:
            per_key = {key: _by_cell(records, key).get((init, n)) for key in METRIC_KEYS}
            if not per_key["dice"]:
                continue
            values = [_spread(v) if v else "-" for v in per_key.values()]
            lines.append(f"| {init} | {n} | " + " | ".join(values) + " |")
    lines += ["", "## Wall time", ""]
    for stage, seconds in stage_seconds.items():
        lines.append(f"- {stage}: {seconds / 60:.1f} min")
    return "\n".join(lines) + "\n"


def plot_dice_vs_labels(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _by_cell(records)
    figure, axis = plt.subplots(figsize=(6, 4))
    for init in _inits_in(records):
        ns = sorted(n for i, n in cells if i == init)
        means = [np.mean(cells[(init, n)]) for n in ns]
        spreads = [np.std(cells[(init, n)]) for n in ns]
        axis.errorbar(ns, means, yerr=spreads, marker="o", capsize=3, label=init,
                      linestyle="--" if init == FRANGI else "-")
    axis.set(xscale="log", xlabel="labelled training pairs N", ylabel="held-out Dice (mean +- std over seeds)")
    ns_all = sorted({n for _, n in cells})
    axis.minorticks_off()
    axis.set_xticks(ns_all, [str(n) for n in ns_all])
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def stage_seconds(pretraining, records):
    """Training time of each stage, summed over runs (so resumed calls add up)."""
    times = {}
    if pretraining:
        times["pretraining (" + ", ".join(pretraining) + ")"] = sum(v["seconds"] for v in pretraining.values())
    if records:
        times[f"sweep ({len(records)} runs)"] = sum(r.get("seconds", 0.0) for r in records)
    return times


def check_same_protocol(study, runs_dir):
    """Refuse to mix runs of two budgets in one runs folder (N and seeds may grow)."""
    from cm_unet_keras.core.errors import InvalidInputError

    protocol = {k: v for k, v in dataclasses.asdict(study).items()
                if k not in ("n_labels", "seeds", "seeds_by_n", "inits", "frangi")}
    protocol = json.loads(json.dumps(json_safe(protocol)))
    path = Path(runs_dir) / "study.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in protocol if previous.get(k) != protocol[k])
        if changed:
            raise InvalidInputError(runs_dir, f"holds a study with other {changed}; use a new --runs folder")
    else:
        path.write_text(json.dumps(protocol, indent=2))


def checkout_paths(gpu_paper=False):
    """The study's default paths when the package runs from its source
    checkout (`setup.py` and `recipes/xca_split.json` beside the package):
    `../shared/data` beside the checkout, its split, `runs/` and
    `benchmarks/`. None for an installed package, which has no such places
    (they would point into site-packages).

    Returns:
        `{"root", "data", "split", "runs", "out"}` or None.
    """
    root = Path(__file__).resolve().parents[1]
    if not ((root / "setup.py").is_file() and (root / "recipes" / "xca_split.json").is_file()):
        return None
    name = "label_efficiency_gpu_paper" if gpu_paper else "label_efficiency"
    return {
        "root": root,
        "data": root.parent / "shared" / "data",
        "split": root / "recipes" / "xca_split.json",
        "runs": root / "runs" / name,
        "out": root / "benchmarks" / name,
    }


def run_study(study, data_root, split_path, runs_dir, out_dir, stage="all", log=print, verbose=2, command=""):
    """Both stages (or one), then the three result files.

    Returns:
        {"pretraining", "records", "new_runs", "stage_seconds", "out_dir"}.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    check_same_protocol(study, runs_dir)
    (runs_dir / "split.json").write_text(Path(split_path).read_text())
    pretraining = {}
    if stage in ("pretrain", "all"):
        pretraining = run_pretraining(study, data_root, split_path, runs_dir, log, verbose)
        (runs_dir / "pretraining.json").write_text(json.dumps(pretraining, indent=2))
    elif (runs_dir / "pretraining.json").is_file():
        pretraining = json.loads((runs_dir / "pretraining.json").read_text())
    records, new = [], 0
    if stage in ("sweep", "all"):
        records, new = run_sweep(study, data_root, split_path, runs_dir, log, verbose)
        times = stage_seconds(pretraining, records)
        write_results(records, out_dir, times, command, study)
    return {"pretraining": pretraining, "records": records, "new_runs": new,
            "stage_seconds": stage_seconds(pretraining, records), "out_dir": str(out_dir)}
