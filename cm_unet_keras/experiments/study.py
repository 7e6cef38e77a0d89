"""The label-efficiency study: how much Dice each initialisation keeps with few labels.

Issue 4's recipe, shared by `recipes/label_efficiency.py` and `cm-unet study`.

Stage 1 (`run_pretraining`) pretrains three variants of the same code on the
unlabeled pool (ARCADE, all splits, plus the XCA training images without
their masks): `cmunet` (both losses), `mae_only` (ct_weight 0) and
`contrastive_only` (rc_weight 0). Each is an ordinary `pretrain` run folder,
so an interrupted stage resumes and a finished one is not redone.

Stage 2 (`run_sweep`) fine-tunes, for every N in `n_labels` and seed in
`seeds`, from each init in `inits` (`scratch` or a pretraining variant),
with one shared `FinetuneConfig`; an init `VARIANT@STEPS` (`cmunet@500`) is
that start fine-tuned for its own number of steps at every N, a budget
chosen for it on the selection pairs (`benchmarks/pretrain_screen.py`),
never on the reported ones. A seed draws the N labelled pairs (a
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
import time
from pathlib import Path

from cm_unet_keras.config import split_init
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write_json, json_safe
from cm_unet_keras.evaluation.evaluate import write_report
from cm_unet_keras.experiments.data import labelled_subset, study_data, unlabeled_pool
from cm_unet_keras.experiments.frangi import FRANGI, evaluate_frangi, tune_frangi
from cm_unet_keras.experiments.report import init_start, write_results
from cm_unet_keras.experiments.runs import finetune_and_evaluate
from cm_unet_keras.experiments.store import append_jsonl, read_jsonl
from cm_unet_keras.training.pretrain import pretrain

PRETRAINED_INITS = {
    "cmunet": {"rc_weight": 1.0, "ct_weight": 1.0},
    "mae_only": {"rc_weight": 1.0, "ct_weight": 0.0},
    "contrastive_only": {"rc_weight": 0.0, "ct_weight": 1.0},
}
RESULTS_JSONL = "results.jsonl"


def run_config(study, init, n_labels, seed, pretrain_dir):
    """The `FinetuneConfig` of one sweep run: the shared budget (or the init's
    own, `cmunet@500`), this run's seed and init; all N pairs train and the
    last epoch is kept, whatever N."""
    config = copy.deepcopy(study.finetune)
    config.seed = seed
    start, steps = split_init(init)
    if steps is None and n_labels in study.steps_by_n:
        steps = study.steps_by_n[n_labels]
    if steps is not None:
        if steps % config.steps_per_epoch:
            raise ValueError(f"init {init!r}: {steps} steps is not a whole number of "
                             f"{config.steps_per_epoch}-step epochs")
        config.epochs = steps // config.steps_per_epoch
    config.init = None if start == "scratch" else str(Path(pretrain_dir) / start)
    config.val_fraction, config.select = 0.0, "last"
    return config


# --- stage 1 --------------------------------------------------------------------
def run_pretraining(study, data_root, split_path, runs_dir, log=print, verbose=2):
    """Pretrain (or resume, or skip) each pretraining variant in `study.inits`.

    Returns:
        {variant: {"run_dir", "epochs_done", "seconds"}}; `seconds` is the
        training time summed over the epochs, whatever call ran them.
    """
    train, _ = study_data(data_root, split_path)
    pool = unlabeled_pool(data_root, train)
    done = {}
    for variant in pretrained_variants(study):
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


def pretrained_variants(study):
    """The pretraining variants the study's inits start from (`cmunet@500` -> `cmunet`)."""
    starts = dict.fromkeys(split_init(init)[0] for init in study.inits)
    return [start for start in starts if start in PRETRAINED_INITS]


# --- stage 2 --------------------------------------------------------------------
def run_key(init, n_labels, seed):
    return f"{init}_n{n_labels}_s{seed}"


def read_records(runs_dir):
    """Finished runs of `results.jsonl`, by key (a torn last line is ignored)."""
    return read_jsonl(Path(runs_dir) / RESULTS_JSONL, lambda record: run_key(record["init"], record["n_labels"],
                                                                            record["seed"]))


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
        (every finished record of `runs_dir`: the plan's in plan order, then
        those of earlier calls with other inits, N or seeds, so that a call
        for one init (`--inits mae_only`) reports the whole study; number of
        runs done by this call).
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    train, holdout = study_data(data_root, split_path, study.max_holdout)
    finished = read_records(runs_dir)
    new = 0
    for init, n_labels, seed in sweep_plan(study):
        key = run_key(init, n_labels, seed)
        if key in finished:
            continue
        start = init_start(init)[0]
        if start in PRETRAINED_INITS and not (runs_dir / "pretrain" / start / "pretrained.weights.h5").is_file():
            raise FileNotFoundError(f"no pretraining of {start} in {runs_dir / 'pretrain'}: run --stage pretrain first")
        subset = labelled_subset(train, n_labels, seed)
        started = time.perf_counter()
        run_dir = runs_dir / "sweep" / key
        if init == FRANGI:
            params = tune_frangi(subset, study.frangi_sigma_sets, study.frangi_thresholds)
            report = evaluate_frangi(params, holdout)
            extra = {"selection": "grid search on the N training pairs", "frangi": params}
            write_report(report, run_dir / "holdout.json")
        else:
            config = run_config(study, init, n_labels, seed, runs_dir / "pretrain")
            fit, report = finetune_and_evaluate(config, subset, holdout, run_dir, log=log, verbose=verbose)
            extra = {"selection": "last epoch of the fixed budget", "steps": config.epochs * config.steps_per_epoch,
                     "best_epoch": fit["best_epoch"], "n_train": fit["n_train"],
                     "n_val": fit["n_val"], "best_val_dice": fit["best_val_dice"]}
        record = {
            "init": init, "n_labels": n_labels, "seed": seed,
            "metrics": report["mean"], "metrics_std": report["std"], "n_holdout": report["n_images"],
            "labelled": [r.name for r in subset], "seconds": time.perf_counter() - started, **extra,
        }
        append_jsonl(runs_dir / RESULTS_JSONL, record)
        finished[key] = record
        new += 1
        log(f"{key}: holdout Dice {record['metrics']['dice']:.4f} ({record['seconds']:.0f} s)")
    planned = [run_key(*run) for run in sweep_plan(study)]
    earlier = sorted(set(finished) - set(planned), key=lambda key: (
        finished[key]["n_labels"], finished[key]["seed"], finished[key]["init"] != FRANGI, finished[key]["init"]))
    return [finished[key] for key in planned if key in finished] + [finished[key] for key in earlier], new


def stage_seconds(pretraining, records):
    """Training time of each stage, summed over runs (so resumed calls add up)."""
    times = {f"pretraining ({variant})": done["seconds"] for variant, done in pretraining.items()}
    if records:
        times[f"sweep ({len(records)} runs)"] = sum(r.get("seconds", 0.0) for r in records)
    return times


def check_same_protocol(study, runs_dir):
    """Refuse to mix runs of two budgets in one runs folder (N and seeds may grow)."""
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
    root = Path(__file__).resolve().parents[2]
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
    # Every variant pretrained in this runs folder, by this call or an
    # earlier one (`--inits cmunet`, later `--inits mae_only`).
    record = runs_dir / "pretraining.json"
    pretraining = json.loads(record.read_text()) if record.is_file() else {}
    if stage in ("pretrain", "all"):
        pretraining.update(run_pretraining(study, data_root, split_path, runs_dir, log, verbose))
        atomic_write_json(record, pretraining)
    records, new = [], 0
    if stage in ("sweep", "all"):
        records, new = run_sweep(study, data_root, split_path, runs_dir, log, verbose)
        times = stage_seconds(pretraining, records)
        write_results(records, out_dir, times, command, study)
    return {"pretraining": pretraining, "records": records, "new_runs": new,
            "stage_seconds": stage_seconds(pretraining, records), "out_dir": str(out_dir)}
