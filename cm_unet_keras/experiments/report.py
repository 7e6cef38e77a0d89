"""The study's results: `results.json`, `results.md` (Dice by init and N,
the relative drop and its bootstrap interval, the paired difference from
scratch, every metric, wall time) and `dice_vs_labels.png`; and what every
results writer of the recipes and benchmarks says of its machine and seeds."""

import json
import math
import os
import platform
from pathlib import Path

import numpy as np

from cm_unet_keras.config import INITS, split_init
from cm_unet_keras.core.files import json_safe
from cm_unet_keras.evaluation.metrics import METRIC_KEYS
from cm_unet_keras.experiments.frangi import FRANGI

# The paper (Challier et al. 2025, table of its label study), private FAME2 data: test Dice at ~500 labels
# and at 18 labels, and the relative drop. contrastive_only has no exact
# counterpart; MoCo v2 is the paper's purely contrastive method.
PAPER = {
    "scratch": ("none (scratch)", 0.708, 0.375, 0.470),
    "cmunet": ("CM-UNet", 0.738, 0.627, 0.150),
    "mae_only": ("MAE (U-Net)", 0.705, 0.449, 0.363),
    "contrastive_only": ("MoCo v2 (nearest: contrastive only)", 0.710, 0.556, 0.217),
}


def _by_cell(records, key="dice"):
    """{(init, n): [value per seed]} with missing values left out."""
    cells = {}
    for record in records:
        value = record["metrics"].get(key)
        if value is not None and math.isfinite(value):
            cells.setdefault((record["init"], record["n_labels"]), []).append(value)
    return cells


def relative_drop(records, init, n_high, n_low):
    """(Dice(n_high) - Dice(n_low)) / Dice(n_high) of the seed means, or None
    (also when only one N was run: there is no drop to speak of)."""
    cells = _by_cell(records)
    high, low = cells.get((init, n_high)), cells.get((init, n_low))
    if n_high == n_low or not high or not low or np.mean(high) <= 0:
        return None
    return float((np.mean(high) - np.mean(low)) / np.mean(high))


def relative_drop_interval(records, init, n_high, n_low, level=0.95, resamples=10000, seed=0):
    """Percentile bootstrap interval of `relative_drop`: the seeds of each N
    are resampled with replacement, independently. None below 2 seeds a side
    or with one N."""
    cells = _by_cell(records)
    high, low = cells.get((init, n_high)), cells.get((init, n_low))
    if n_high == n_low or not high or not low or len(high) < 2 or len(low) < 2:
        return None
    return _bootstrap(np.asarray(high, float), np.asarray(low, float),
                      lambda high_means, low_means: (high_means - low_means) / high_means, level, resamples, seed)


def _bootstrap(high, low, statistic, level, resamples, seed):
    """Percentile interval of `statistic(mean of high, mean of low)`: the rows
    (seeds) of `high` and of `low` are resampled with replacement, each on its own."""
    rng = np.random.default_rng(seed)
    high_means = high[rng.integers(len(high), size=(resamples, len(high)))].mean(axis=1)
    low_means = low[rng.integers(len(low), size=(resamples, len(low)))].mean(axis=1)
    values = statistic(high_means, low_means)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def drop_difference(records, init, n_high, n_low, reference="scratch", level=0.95, resamples=10000, seed=0):
    """(point, low, high): `init`'s relative drop minus `reference`'s, with a
    paired percentile bootstrap. The runs of one seed share their labelled
    subsets across inits, so each resample draws the same seeds for both
    (at each N on its own); only the seeds both inits ran count. Bounds are
    None below 2 shared seeds a side; None with one N or a missing cell."""
    by_run = {(r["init"], r["n_labels"], r["seed"]): r["metrics"].get("dice") for r in records}

    def paired(n):
        seeds = sorted(s for (i, m, s), v in by_run.items() if i == init and m == n and v is not None
                       and by_run.get((reference, n, s)) is not None)
        return np.array([[by_run[(init, n, s)], by_run[(reference, n, s)]] for s in seeds]).reshape(-1, 2)

    high, low = paired(n_high), paired(n_low)
    if n_high == n_low or not len(high) or not len(low):
        return None

    def difference(high_means, low_means):
        drops = (high_means - low_means) / high_means  # columns: init, reference
        return drops[..., 0] - drops[..., 1]

    point = float(difference(high.mean(axis=0), low.mean(axis=0)))
    if len(high) < 2 or len(low) < 2:
        return point, None, None
    return (point, *_bootstrap(high, low, difference, level, resamples, seed))


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


def init_start(init):
    """(start, own fine-tuning steps or None) of a record's init
    (`config.split_init`); Frangi is a start of its own."""
    return (FRANGI, None) if init == FRANGI else split_init(init)


def _inits_in(records):
    """Frangi, then the inits in `INITS` order, each followed by its own-budget
    runs (`cmunet`, `cmunet@500`, ...)."""
    order = [FRANGI] + list(INITS)
    present = {r["init"] for r in records}

    def rank(init):
        start, steps = init_start(init)
        return order.index(start), steps or 0

    return sorted(present, key=rank)


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


def _budget_lines(study, inits=()):
    """How the study pretrained and fine-tuned; `inits` (those in the records)
    name the own-budget runs."""
    if study is None:
        return []
    p, f = study.pretrain, study.finetune
    return [
        f"Pretraining (each variant): U-Net width {p.base_filters}, {p.depth} levels; {p.image_size} px views from a "
        f"{p.working_size} px working size, \"{p.views}\" views; batch {p.batch_size}; {p.epochs} epochs x "
        f"{p.steps_per_epoch} steps; peak lr {p.peak_lr():g}; mask {p.mask_ratio:.0%} of {p.patch_size} px patches; "
        f"tau {p.temperature}; EMA {p.ema_momentum}.",
        f"Fine-tuning (every run of every init, but for those named START@STEPS): {f.epochs * f.steps_per_epoch} steps"
        + "".join(f", {steps} at N = {n}" for n, steps in sorted(study.steps_by_n.items()))
        + "".join(f"; {init}: {start} fine-tuned for {steps} steps at every N"
                  for init, (start, steps) in ((i, init_start(i)) for i in inits) if steps is not None)
        + f"; batch {f.batch_size} of {f.patch_size} px patches; AdamW lr {f.lr:g}, weight decay "
        f"{f.weight_decay:g}; Dice weight {f.dice_weight}; precision {f.precision}.",
    ]


def _paired_lines(records, inits, ns, n_high, n_low):
    """The table of each init's paired difference from scratch (none without scratch)."""
    lines = []
    if "scratch" in inits:
        lines += [
            "## Paired difference from scratch (Dice, same subset and seed)",
            "",
            "Mean difference [Student-t 95% interval] (seeds where the init beats scratch / seeds)."
            + (f" Last column: the init's relative drop N={n_high} -> {n_low} minus scratch's [paired bootstrap"
               " 95% interval: the same seeds drawn for both]; below 0, the init loses less." if n_high != n_low else ""),
            "",
            "| init | " + " | ".join(f"N={n}" for n in ns) + (" | drop minus scratch's |" if n_high != n_low else " |"),
            "|---|" + "---|" * len(ns) + ("---|" if n_high != n_low else ""),
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
            if n_high != n_low:
                gap = drop_difference(records, init, n_high, n_low)
                row.append("-" if gap is None else f"{gap[0]:+.1%}" + (
                    f" [{gap[1]:+.1%}, {gap[2]:+.1%}]" if gap[1] is not None else ""))
            lines.append(f"| {init} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def results_markdown(records, stage_seconds, command="", study=None):
    ns = sorted({r["n_labels"] for r in records})
    inits = _inits_in(records)
    n_high, n_low = (ns[-1], ns[0]) if ns else (None, None)
    seeds = sorted({r["seed"] for r in records})
    holdout = sorted({r.get("n_holdout") for r in records} - {None})
    from cm_unet_keras.training.runtime import resolve_precision

    machine_text = f"{machine()}; precision auto = {resolve_precision('auto')} there"
    lines = [
        "# Label efficiency on XCA angiograms (CIMAT), by initialisation",
        "",
        f"Reported on the {holdout or '?'} validation pairs of `recipes/xca_split.json` (never used for",
        f"training, selection or tuning); mean +- sample sd over seeds ({seeds}) of each run's mean over",
        "those pairs. A seed draws N labelled pairs from the 30 training pairs (nested: its 3 are among",
        "its 10, among its 30) and seeds the initialisation; every run trains on all N and keeps the last",
        "epoch.",
        f"Machine: {machine_text}." + (f" Command: `{command}`" if command else ""),
        *_budget_lines(study, inits),
        "",
        "## Dice",
        "",
        "| init | " + " | ".join(f"N={n}" for n in ns)
        + (f" | drop N={n_high} -> {n_low} [95% interval]" if n_high != n_low else " | drop (one N run: none)")
        + " | paper: ~500 -> 18 labels (drop) |",
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
    lines += _paired_lines(records, inits, ns, n_high, n_low)
    # Records written before a metric existed lack it: its column is left out.
    keys = [key for key in METRIC_KEYS if any(key in record["metrics"] for record in records)]
    lines += [
        "## All metrics (mean +- sample sd over seeds)",
        "",
        "| init | N | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for init in inits:
        for n in ns:
            per_key = {key: _by_cell(records, key).get((init, n)) for key in keys}
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


def machine():
    """'x86_64, 2 cores': where the numbers were measured."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def recorded(rows, key, unrecorded):
    """What stored runs say of themselves (`key`: "machine", "precision"),
    for a report rewritten from them: where they ran, not where the report
    is written. Rows from before runs recorded `key` count as `unrecorded`."""
    return "; ".join(sorted({str(row.get(key, unrecorded)) for row in rows}))


def over_seeds(runs, key):
    """(mean, population sd) over seeds of each run's held-out mean of `key` (`run_seeds` records)."""
    values = [run["holdout"]["mean"][key] for run in runs]
    return float(np.mean(values)), float(np.std(values))
