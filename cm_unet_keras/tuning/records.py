"""What a search writes beside its trials: `trials.csv`, `search.json` (its
settings, which a rerun must match), `best.yaml`, `summary.json` and
`wall_seconds.json`."""

import csv
import io
import json
import time
from pathlib import Path

from cm_unet_keras.config import FinetuneConfig, config_to_dict, write_recipe
from cm_unet_keras.core.errors import InvalidInputError
from cm_unet_keras.core.files import atomic_write, atomic_write_json
from cm_unet_keras.tuning.hypermodel import trial_key

class WallClock:
    """Wall time of a search over all its calls, saved at every trial end.

    A killed call never reaches its summary; saving at trial ends loses at
    most the unfinished trial's time.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.before = json.loads(self.path.read_text())["seconds"] if self.path.is_file() else 0.0
        self.started = time.perf_counter()

    def seconds(self):
        return self.before + time.perf_counter() - self.started

    def save(self):
        atomic_write_json(self.path, {"seconds": self.seconds()})


def write_trials_csv(oracle, hypermodel, path):
    """One row per trial: id, status, score, fold scores, values, run folder."""
    names = list(hypermodel.space)
    n_folds = len(hypermodel.folds)
    fields = (["trial_id", "status", "val_dice", "val_dice_std"]
              + [f"val_dice_fold{i}" for i in range(n_folds)] + ["seconds"] + names + ["epochs", "runs"])
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        hp = trial.hyperparameters
        config = hypermodel.trial_config(hp, hp.values.get("tuner/epochs"))
        row = {"trial_id": trial_id, "status": trial.status, "epochs": config.epochs,
               "runs": f"runs/{trial_key(config, names)}"}
        row.update({name: hp.get(name) for name in names})
        for metric in fields[2 : 5 + n_folds]:
            if trial.metrics.exists(metric):
                row[metric] = trial.metrics.get_last_value(metric)
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def check_settings(path, settings):
    """Write the search's settings, or refuse a rerun that changes them."""
    if path.is_file():
        # Compared as search.json holds them: a tuple (augment_scale) is a list there.
        changed = changed_settings(json.loads(path.read_text()), json.loads(json.dumps(settings)))
        if changed:
            raise InvalidInputError(
                path.parent,
                f"holds a search with other settings ({', '.join(changed)} differ); "
                "rerun with the same ones to resume it, or choose a new --out",
            )
    else:
        atomic_write_json(path, settings)


def changed_settings(previous, current):
    """Names of the settings that differ between two calls of a search."""
    changed = [key for key in set(previous) | set(current)
               if key != "base_config" and previous.get(key) != current.get(key)]
    # A field added to FinetuneConfig since the search began leaves it the
    # same search while the field holds its default.
    defaults = config_to_dict(FinetuneConfig())
    old, new = previous.get("base_config", {}), current.get("base_config", {})
    if any(old.get(k, defaults.get(k)) != new.get(k, defaults.get(k)) for k in set(old) | set(new)):
        changed.append("base_config")
    return sorted(changed)


def write_summary(oracle, hypermodel, out_dir, clock):
    """Write best.yaml and summary.json from the oracle's trials."""
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        raise RuntimeError(f"no trial of the search in {out_dir} completed; see {out_dir / 'trials.csv'}")
    best = oracle.get_best_trials(1)[0]
    hp = best.hyperparameters
    best_config = hypermodel.trial_config(hp, hp.values.get("tuner/epochs"))
    write_recipe(best_config, out_dir / "best.yaml")
    summary = {
        "best_trial": best.trial_id,
        "best_val_dice": best.score,
        "best_values": {name: hp.get(name) for name in hypermodel.space},
        "best_config": str(out_dir / "best.yaml"),
        "trials": len(oracle.trials),
        "trials_completed": len(completed),
        "folds": len(hypermodel.folds),
        "seconds_this_call": time.perf_counter() - clock.started,
        "seconds_total": clock.seconds(),
        "seconds_in_trials": sum(_trial_seconds(trial) for trial in oracle.trials.values()),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _trial_seconds(trial):
    return trial.metrics.get_last_value("seconds") if trial.metrics.exists("seconds") else 0.0
