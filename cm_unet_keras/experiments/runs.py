"""The cycle every experiment repeats: fine-tune, score the kept model on
pairs that nothing chose on, keep the score beside the run, once per seed;
and a model scored on the validation part of every public source."""

import dataclasses
import time
from pathlib import Path

from cm_unet_keras.evaluation.evaluate import evaluate_model, write_report
from cm_unet_keras.experiments.data import source_records
from cm_unet_keras.inference.predict import load_model
from cm_unet_keras.models.presets import resolve_model_path
from cm_unet_keras.models.segmentation import resolve_settings
from cm_unet_keras.training.finetune import finetune


def finetune_and_evaluate(config, train_records, holdout_records, run_dir, log=print, verbose=2, **finetune_args):
    """Fine-tune `config` on `train_records` (resuming `run_dir`), then score
    the kept model on `holdout_records` at `config.threshold`; the report is
    written to `run_dir/holdout.json`.

    Returns:
        (the `finetune` result, the `evaluate_model` report).
    """
    fit = finetune(config, train_records, run_dir, log=log, verbose=verbose, **finetune_args)
    report = evaluate_model(load_model(fit["model_path"]), holdout_records, threshold=config.threshold)
    write_report(report, Path(run_dir) / "holdout.json")
    return fit, report


def run_seeds(config, seeds, train_records, holdout_records, runs_dir, log=print, verbose=2):
    """`config` fine-tuned once per seed (in `runs_dir/seed<seed>`, resumed
    where a run stopped), each scored on `holdout_records`.

    Returns:
        One record per seed: `seed`, `config`, `best_val_dice`,
        `best_epoch`, `train_seconds_this_call`, `wall_seconds_this_call`
        and `holdout` (`mean` and `std` of the held-out report).
    """
    results = []
    for seed in seeds:
        seeded = dataclasses.replace(config, seed=seed)
        run_dir = Path(runs_dir) / f"seed{seed}"
        started = time.perf_counter()
        fit, report = finetune_and_evaluate(seeded, train_records, holdout_records, run_dir, log=log, verbose=verbose)
        results.append({
            "seed": seed,
            "config": dataclasses.asdict(seeded),
            "best_val_dice": fit["best_val_dice"],
            "best_epoch": fit["best_epoch"],
            "train_seconds_this_call": fit["seconds"],
            "wall_seconds_this_call": time.perf_counter() - started,
            "holdout": {"mean": report["mean"], "std": report["std"]},
        })
        log(f"{run_dir}: held-out Dice {report['mean']['dice']:.4f}")
    return results


def score_sources(model_name, sources, data_root, recipes, tta=False, log=print):
    """A model (preset, `.keras` file or run folder) scored at its own
    threshold and CLAHE setting on the validation records of each of
    `sources` (`experiments.data.SOURCES`).

    Returns:
        `{"settings": {"threshold", "clahe", "from"}, "reports": {source:
        evaluate_model report, with its "seconds"}}`.
    """
    path = resolve_model_path(model_name)
    model = load_model(path)
    threshold, clahe, origin = resolve_settings(path)
    settings = {"threshold": threshold, "clahe": clahe, "from": origin}
    reports = {}
    for source in sources:
        records = source_records(source, data_root, recipes)
        started = time.perf_counter()
        report = evaluate_model(model, records, threshold=settings["threshold"], clahe=settings["clahe"], tta=tta)
        report["seconds"] = round(time.perf_counter() - started, 1)
        reports[source] = report
        log(f"{model_name} on {source} ({len(records)} images): Dice {report['mean']['dice']:.3f}, "
            f"sensitivity {report['mean']['sensitivity']:.3f}, specificity {report['mean']['specificity']:.3f}")
    return {"settings": settings, "reports": reports}
