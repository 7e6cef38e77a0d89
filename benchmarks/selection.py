"""Which frames to annotate, measured (issue 26).

Two targets, each a pool of labelled training pairs to choose from and
validation pairs to score on; every choice is fine-tuned from one start by
the package's few-label default (`apply_few_label_rule`, as
`cm-unet finetune --init START` applies it: only the chosen pairs differ
between runs) and scored on the validation pairs (`finetune_and_evaluate`).

- `cimat` (k = 3): the 30 CIMAT training pairs of `recipes/xca_split.json`,
  scored on its 10 validation pairs; start `cmunet_small_pretrained`
  (500 steps at 2e-3). Headline: Dice.
- `arcade` (k = 10): the 140 ARCADE training pairs of
  `recipes/arcade_split.json`, scored on its 60 validation pairs (main
  segments only); start `cmunet_small_xca`, a model that never saw an
  ARCADE mask (200 steps at 2e-3). Headline: centerline recall (ARCADE's
  polygons are drawn wider than the lumen and side branches are
  unlabelled, so Dice undercounts a correct mask; issue 25), Dice and
  specificity beside it.

Strategies (`cm_unet_keras.selection.choose_frames`): typical, coverage
(k-center greedy) and peak rank with `cmunet_small_pretrained`, the model
`cm-unet select` is documented with; uncertainty needs a segmenting model
(`cmunet_small_general` on CIMAT, `cmunet_small_xca` on ARCADE); and 20
seeded random draws. `--train-seeds N` also fine-tunes each strategy's
choice with training seeds 1..N-1, so that the spread of one choice over
training noise sits beside the spread of the draws; `--draw-seeds N` fine-tunes
the random draws with training seeds 1..N-1 too, and each strategy is then
also compared with the draws trained with its own seeds ("paired by seed").

    python benchmarks/selection.py                      # CIMAT k = 3, then the report
    python benchmarks/selection.py --target arcade --draw-seeds 3   # ARCADE k = 10
    python benchmarks/selection.py --target arcade --report         # from the stored runs and choices
    python benchmarks/adaptation.py --stage starts --arcade-train DIR  # the generalist without CIMAT, then:
    python benchmarks/selection.py --count 10 --start runs/adaptation/starts/general_no_cimat/model.keras
    python benchmarks/selection.py --count 3 --train-seeds 1 --start runs/adaptation/starts/general_no_cimat/model.keras

`--start` or `--count` points a target at another start or k: its results
go to `benchmarks/selection/<target>_k<count>_<start name>/`, and its
report's protocol names that start and the budgets its runs trained with.

Each finished run is a line of `benchmarks/selection/[TARGET/]runs.jsonl`;
a rerun skips those, resumes an interrupted one from
`runs/selection/[TARGET/]<key>`, and a choice made twice (a random draw equal
to a strategy's) is trained once.
"""

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "benchmarks" / "selection"
RUNS = ROOT / "runs" / "selection"
RECIPES = ROOT / "recipes"  # the split files
PRETRAINED = "cmunet_small_pretrained"
RANDOM_DRAWS = 20
# Per target: how many pairs to choose, the fine-tuning start, the model
# whose flip disagreement ranks "uncertainty", the headline metric, the
# folder of its results under OUT (and of its runs under RUNS), and the
# pairs it is scored on.
TARGETS = {
    "cimat": {"count": 3, "start": PRETRAINED, "uncertainty": "cmunet_small_general", "headline": "dice",
              "folder": "", "name": "CIMAT", "pool": 30, "metrics": ("dice",),
              "scored": "the 10 validation pairs of `recipes/xca_split.json`"},
    "arcade": {"count": 10, "start": "cmunet_small_xca", "uncertainty": "cmunet_small_xca",
               "headline": "centerline_recall", "folder": "arcade", "name": "ARCADE", "pool": 140,
               "metrics": ("centerline_recall", "dice", "sensitivity", "specificity"),
               "scored": "the 60 validation pairs of `recipes/arcade_split.json` (main segments only)"},
}
MACHINE = "Machine: 2-core x86-64 (AVX512_BF16), shared with other jobs; the seconds are not a speed measurement."


def run_key(names, seed=0):
    return "pairs_" + "_".join(names) + (f"_seed{seed}" if seed else "")


def metric(row, name):
    """A run's `name` metric (the first CIMAT runs stored only their Dice)."""
    return row.get("metrics", {}).get(name, row.get(name))


def choices(spec, train, log):
    """`[(label, strategy model, [names], [reasons])]`: each strategy's choice, then the random draws'."""
    import warnings

    from cm_unet_keras.inference.predict import load_model
    from cm_unet_keras.selection import choose_frames

    strategy_runs = (("typical", PRETRAINED, {}), ("coverage", PRETRAINED, {"coverage": True}),
                     ("peak", PRETRAINED, {}), ("uncertainty", spec["uncertainty"], {}))
    models, made = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in {PRETRAINED, spec["uncertainty"]}:
            models[name] = load_model(name)
    runs = [(label, model, dict(options, strategy="typical" if label == "coverage" else label))
            for label, model, options in strategy_runs]
    runs += [(f"random{seed}", PRETRAINED, {"strategy": "random", "seed": seed}) for seed in range(RANDOM_DRAWS)]
    for label, model, options in runs:
        # The stored choices were scanned in "auto" precision (mixed_bfloat16 on the machines that ran
        # them), select's default before it became float32 (issue 32): kept, so they reproduce.
        chosen = choose_frames(models[model], train, spec["count"], precision="auto", **options)
        names = sorted(choice["record"].name for choice in chosen)
        made.append((label, model, names, [choice["why"] for choice in chosen]))
        log(f"{label}: {names}")
    return made


def few_label_config(start, count, seed):
    """The start's `FinetuneConfig` as `cm-unet finetune --init START` makes
    it for `count` pairs: the few-label rule's budget and learning rate."""
    from cm_unet_keras.config import FinetuneConfig
    from cm_unet_keras.training.few_label import apply_few_label_rule

    config, message = apply_few_label_rule(FinetuneConfig(init=start, seed=seed), count)
    return config, message


def run_choice(spec, label, names, train, holdout, seed=0):
    from cm_unet_keras.experiments.runs import finetune_and_evaluate

    config, message = few_label_config(spec["start"], len(names), seed)
    records = [record for record in train if record.name in names]
    key = run_key(names, seed)
    started = time.perf_counter()
    _, report = finetune_and_evaluate(config, records, holdout, spec["runs"] / key, verbose=0,
                                      log=lambda line: print(f"[{label}] {line}", flush=True))
    return {"key": key, "names": names, "seed": seed, "steps": config.epochs * config.steps_per_epoch,
            "lr": config.lr, "rule": message, "dice": report["mean"]["dice"], "metrics": report["mean"],
            "per_image": [row["dice"] for row in report["per_image"]], "seconds": time.perf_counter() - started}


def summary(made, runs, name):
    """The report's numbers for metric `name`: each strategy's value (its
    seed-0 run, as the draws') and rank among the draws, and its seeds."""
    value = {label: metric(runs[run_key(names)], name) for label, _, names, _ in made if run_key(names) in runs}
    draws = np.array([v for label, v in value.items() if label.startswith("random")])
    result = {"random": None, "strategies": {}}
    if len(draws):
        q1, median, q3 = np.percentile(draws, [25, 50, 75])
        result["random"] = {"draws": len(draws), "mean": float(draws.mean()), "std": float(draws.std(ddof=1)) if
                            len(draws) > 1 else 0.0, "q1": float(q1), "median": float(median), "q3": float(q3),
                            "min": float(draws.min()), "max": float(draws.max())}
    by_seed = {}
    for label, _, names, _ in made:
        if label.startswith("random"):
            for row in runs.values():
                if row["names"] == names:
                    by_seed.setdefault(row.get("seed", 0), []).append(metric(row, name))
    result["random_by_seed"] = {str(seed): {"draws": len(v), "mean": float(np.mean(v))} for seed, v in sorted(by_seed.items())}
    for label, model, names, reasons in made:
        if label.startswith("random") or label not in value:
            continue
        seeds = sorted((row.get("seed", 0), metric(row, name)) for row in runs.values()
                       if row["names"] == names)
        paired = [v - np.mean(by_seed[seed]) for seed, v in seeds if len(by_seed.get(seed, ())) >= 2]
        result["strategies"][label] = {
            "model": model, "pairs": names, "why": reasons, name: value[label],
            "draws_below": int((draws < value[label]).sum()), "draws": len(draws),
            "minus_random_mean": float(value[label] - draws.mean()) if len(draws) else None,
            "above_q3": bool(len(draws) and value[label] > result["random"]["q3"]),
            "seeds": {str(seed): v for seed, v in seeds},
            # The draws fine-tuned with the same training seeds: each seed's
            # difference to the draws' mean at that seed, averaged.
            "minus_random_mean_paired": float(np.mean(paired)) if paired else None,
            "paired_seeds": len(paired),
        }
    return result


NOTES = {"cimat": """Protocol: every choice is fine-tuned from `cmunet_small_pretrained` by the few-label rule
(`FinetuneConfig(init=...)` through `apply_few_label_rule`: 500 steps at 2e-3 for 3 pairs, every other
setting default, seed 0), and scored on the 10 validation pairs of `recipes/xca_split.json` at the
model's threshold; only the 3 chosen pairs differ between runs. typical, coverage (k-center greedy) and
peak (vesselness: no cine here, so the 3 single frames of highest vesselness) rank with
`cmunet_small_pretrained`; uncertainty with `cmunet_small_general`, whose card says it was fine-tuned on
these same 30 CIMAT training pairs (and 140 ARCADE pairs): its flip disagreement is measured on images it
has seen, so this row is not a cold-start uncertainty result. The spread of the draws at one training seed
holds both the choice and the training noise of that seed.
""" + MACHINE,
         "arcade": """Protocol: every choice of 10 of the 140 ARCADE training pairs of `recipes/arcade_split.json` is
fine-tuned from `cmunet_small_xca` (trained on 30 CIMAT pairs; it never saw an ARCADE mask) by the
few-label rule (a segmenting start, 3-10 pairs: 200 steps at 2e-3, seed 0) and scored on the 60 validation
pairs at the model's threshold. typical, coverage and peak (vesselness) rank with `cmunet_small_pretrained`
(pretrained on unlabeled ARCADE stenosis angiograms, no masks); uncertainty ranks by the flip disagreement
of `cmunet_small_xca`, the start itself: a real cold start on a new source. Headline: centerline recall
(the share of the annotated main segments' skeleton that the mask covers; ARCADE's polygons are wider
than the lumen and its side branches are unlabelled, so pixel Dice undercounts a correct mask).
""" + MACHINE}


def verdict(target, result, name):
    """Whether the best strategy meets issue 26's target: at k = 3 on CIMAT,
    mean Dice >= the random draws' mean + 0.02 and above their 75th
    percentile; at k = 10 on ARCADE, >= the random draws' mean."""
    strategies, random = result["strategies"], result["random"]
    if not strategies or not random:
        return "Not enough runs yet for a verdict."
    label, best = max(strategies.items(), key=lambda item: item[1][name])
    typical = strategies.get("typical")
    if target == "cimat":
        rule = "(>= random mean + 0.02 and above the 75th percentile)"
        met = typical is not None and typical["minus_random_mean"] >= 0.02 and typical["above_q3"]
    else:
        rule = "(>= the random draws' mean)"
        met = typical is not None and typical["minus_random_mean"] >= 0
    provisional = f" (provisional: {random['draws']} of {RANDOM_DRAWS} draws)" if random["draws"] < RANDOM_DRAWS else ""
    lines = [f"Best strategy by {name}: {label} ({best[name]:.4f}, {best['minus_random_mean']:+.4f} over the mean of "
             f"{random['draws']} random draws, above {best['draws_below']} of them){provisional}."]
    if typical is not None:
        lines.append(f"The default, typical: {typical[name]:.4f} ({typical['minus_random_mean']:+.4f}, above "
                     f"{typical['draws_below']} of {typical['draws']} draws); target {rule}: "
                     f"{'met' if met else 'not met'}.")
    return " ".join(lines)


def report(spec, made, runs):
    target, out, count, headline = spec["target"], spec["out"], spec["count"], spec["headline"]
    results = {name: summary(made, runs, name) for name in spec["metrics"]}
    stored = dict(results[headline], k=count, headline=headline, start=spec["start"],
                  by_metric={name: r for name, r in results.items() if name != headline},
                  runs={label: runs.get(run_key(names)) for label, _, names, _ in made})
    (out / "results.json").write_text(json.dumps(stored, indent=1) + "\n")
    random = results[headline]["random"]
    done = random["draws"] if random else 0
    strategy_seeds, draw_seeds = seeds_run(made, runs)
    flags = spec["flags"]
    flags += f" --train-seeds {len(strategy_seeds)}" if len(strategy_seeds) != 3 else ""
    flags += f" --draw-seeds {len(draw_seeds)}" if len(draw_seeds) > 1 else ""
    lines = [f"# Which {count} {spec['name']} pairs to label: strategies against random draws "
             f"({done} of {RANDOM_DRAWS} run)", "",
             f"Generated by `python benchmarks/selection.py {flags}` (see its docstring for the protocol).", "",
             f"Training seeds: the strategies' choices at {', '.join(map(str, strategy_seeds)) or 'none yet'}; "
             f"the random draws at {', '.join(map(str, draw_seeds)) or 'none yet'}. A strategy's difference "
             "\"paired by seed\" is against the draws' mean at the same training seeds.", ""]
    for name in spec["metrics"]:
        result = results[name]
        random = result["random"]
        lines += [f"## {name}{' (headline)' if name == headline else ''}", ""]
        if random:
            lines += [f"Random draws ({random['draws']}): mean {random['mean']:.4f} (sd {random['std']:.4f}), "
                      f"quartiles {random['q1']:.4f} / {random['median']:.4f} / {random['q3']:.4f}, "
                      f"range {random['min']:.4f}-{random['max']:.4f}.", ""]
        by_seed = result["random_by_seed"]
        if len(by_seed) > 1:
            lines += ["Draws per training seed: " + "; ".join(f"seed {seed}: {v['draws']} draws, mean {v['mean']:.4f}"
                                                           for seed, v in by_seed.items()) + ".", ""]
        lines += [f"| strategy | model | pairs | {name} (seed 0) | - random mean | draws below | above 75th pct | "
                  "each training seed | - random mean, paired by seed |", "|---|---|---|---|---|---|---|---|---|"]
        for label, row in result["strategies"].items():
            delta = "" if row["minus_random_mean"] is None else f"{row['minus_random_mean']:+.4f}"
            seeds = list(row["seeds"].values())
            spread = ", ".join(f"{v:.4f}" for v in seeds)
            if len(seeds) > 1:
                spread += f" (mean {np.mean(seeds):.4f} +- {np.std(seeds, ddof=1):.4f})"
            lines.append(f"| {label} | {row['model']} | {', '.join(row['pairs'])} | {row[name]:.4f} | {delta} | "
                         f"{row['draws_below']}/{row['draws']} | {'yes' if row['above_q3'] else 'no'} | {spread} | "
                         + (f"{row['minus_random_mean_paired']:+.4f} ({row['paired_seeds']} seeds) |"
                            if row["minus_random_mean_paired"] is not None else "- |"))
        lines += ["", verdict(target, result, name), ""]
    draws = [(label, names, seed, runs[run_key(names, seed)]) for seed in range(RANDOM_DRAWS)
             for label, _, names, _ in made if label.startswith("random") and run_key(names, seed) in runs]
    lines += ["## Random draws", "", "| random draw | pairs | training seed | " + " | ".join(spec["metrics"]) + " |",
              "|---|---|---|" + "---|" * len(spec["metrics"])]
    lines += [f"| {label} | {', '.join(names)} | {seed} | " + " | ".join(f"{metric(row, m):.4f}" for m in spec["metrics"])
              + " |" for label, names, seed, row in draws]
    lines += ["", notes(spec, runs)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def configure(target, start=None, count=None):
    """The spec of `target`, or of `target` pointed at another fine-tuning
    start or k: then its results go to `OUT/<target>_k<count>_<start name>/`,
    and the start also ranks "uncertainty" (a model that segments)."""
    spec = dict(TARGETS[target], target=target, flags=f"--target {target}", notes=NOTES[target])
    if start is None and count is None:
        spec["out"], spec["runs"] = OUT / spec["folder"], RUNS / spec["folder"]
        return spec
    spec["count"] = count or spec["count"]
    if start is not None:
        spec["start"] = spec["uncertainty"] = start
    label = Path(start).parent.name if start and Path(start).suffix == ".keras" else spec["start"]
    folder = f"{target}_k{spec['count']}_{label}"
    spec["out"], spec["runs"] = OUT / folder, RUNS / folder
    spec["flags"] = f"--target {target} --count {spec['count']}" + (f" --start {start}" if start else "")
    spec["notes"] = None  # written from the runs: `notes`
    return spec


def notes(spec, runs):
    """The report's protocol notes: the target's own, or for another start or
    k, the protocol as the finished runs ran it (their budgets)."""
    if spec["notes"] is not None:
        return spec["notes"]
    budgets = sorted({(row["steps"], row["lr"]) for row in runs.values() if row.get("steps")}, reverse=True)
    budget = " or ".join(f"{steps} steps at lr {lr:g}" for steps, lr in budgets) or "no run yet"
    count = spec["count"]
    text = (f"Protocol: every choice of {count} of the {spec['pool']} {spec['name']} training pairs is fine-tuned "
            f"from `{spec['start']}` by the few-label rule (`apply_few_label_rule` for that start and {count} pairs, "
            f"as `cm-unet finetune --init START` applies it: {budget} in the runs here, every other setting default) "
            f"and scored on {spec['scored']} at the model's threshold; only the {count} chosen pairs differ between "
            f"runs. typical, coverage (k-center greedy) and peak rank with `{PRETRAINED}`; uncertainty ranks by the "
            "flip disagreement of the start itself.")
    if "adaptation/starts/general_no_cimat" in spec["start"]:
        text += ("\nThe start is the generalist without CIMAT labels, built by `python benchmarks/adaptation.py "
                 f"--stage starts` (not shipped): `{PRETRAINED}` fine-tuned on ARCADE's syntax train split and the "
                 f"140 ARCADE training pairs. `{PRETRAINED}` was pretrained on unlabeled angiograms that include the "
                 "30 CIMAT training images (not their masks): the start has seen these images, never their labels.")
    return "\n".join(textwrap.fill(paragraph, 105) for paragraph in text.split("\n")) + "\n" + MACHINE


def seeds_run(made, runs):
    """(training seeds of the strategies' choices, of the random draws) among
    the finished runs: the report says what was run, not what was asked."""
    draws = {tuple(names) for label, _, names, _ in made if label.startswith("random")}
    strategies = {tuple(names) for label, _, names, _ in made if not label.startswith("random")}
    seeds = {key: {row.get("seed", 0) for row in runs.values() if tuple(row["names"]) in group}
             for key, group in (("strategies", strategies), ("draws", draws))}
    return sorted(seeds["strategies"]), sorted(seeds["draws"])


def main(argv=None):
    from cm_unet_keras.experiments.data import target_parts
    from cm_unet_keras.experiments.store import append_jsonl, read_jsonl

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--target", choices=sorted(TARGETS), default="cimat")
    parser.add_argument("--train-seeds", type=int, default=3,
                        help="fine-tune each strategy's choice with training seeds 0..N-1 (random draws: seed 0)")
    parser.add_argument("--start", help="another fine-tuning start (.keras file or preset); it also ranks uncertainty")
    parser.add_argument("--count", type=int, help="pairs to choose (default: 3 on CIMAT, 10 on ARCADE)")
    parser.add_argument("--draw-seeds", type=int, default=1,
                        help="fine-tune each random draw with training seeds 0..N-1 too")
    parser.add_argument("--report", action="store_true",
                        help="only write the report of the finished runs (from the stored choices.json)")
    args = parser.parse_args(argv)
    spec = configure(args.target, args.start, args.count)
    out = spec["out"]
    out.mkdir(parents=True, exist_ok=True)
    stored_choices = out / "choices.json"
    if args.report and stored_choices.exists():
        # The report of finished runs needs no model: the choices they trained on are stored.
        made = [(c["label"], c["model"], c["pairs"], c["why"]) for c in json.loads(stored_choices.read_text())]
        report(spec, made, read_jsonl(out / "runs.jsonl", lambda row: row["key"]))
        return
    train, holdout = target_parts(args.target, args.data_root, RECIPES)
    made = choices(spec, train, log=print)
    stored_choices.write_text(json.dumps([{"label": l, "model": m, "pairs": n, "why": w}
                                          for l, m, n, w in made], indent=1) + "\n")
    runs = read_jsonl(out / "runs.jsonl", lambda row: row["key"])
    if not args.report:
        # Every choice at seed 0 first (the comparison), then the strategies' other seeds.
        plan = [(label, names, 0) for label, _, names, _ in made]
        plan += [(label, names, seed) for seed in range(1, args.train_seeds)
                 for label, _, names, _ in made if not label.startswith("random")]
        plan += [(label, names, seed) for seed in range(1, args.draw_seeds)
                 for label, _, names, _ in made if label.startswith("random")]
        for label, names, seed in plan:
            if run_key(names, seed) in runs:
                continue
            row = run_choice(spec, label, names, train, holdout, seed)
            append_jsonl(out / "runs.jsonl", row)
            runs[row["key"]] = row
            print(f"{label} seed {seed}: {names} {spec['headline']} {metric(row, spec['headline']):.4f} "
                  f"({row['seconds']:.0f} s)", flush=True)
            report(spec, made, runs)
    report(spec, made, runs)


if __name__ == "__main__":
    main()
