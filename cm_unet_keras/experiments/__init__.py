"""Experiments built on the library: the label-efficiency study and the
pieces the recipes and benchmarks share.

- `study`: the study's two stages and its protocol check (`cm-unet
  study`).
- `presets`: the study's presets (`cpu`, `gpu_paper`, `quick`), without
  the training code (`cm-unet study --help` shows them at once).
- `data`: the parts of the public sources (CIMAT's 30 / 10 split,
  ARCADE's 140 / 60, XCAD's 2 pairs), nested labelled subsets and their
  selection pairs, the unlabeled pool.
- `frangi`: the tuned Frangi vesselness baseline.
- `runs`: fine-tune -> score on held-out pairs -> `holdout.json`, once per
  seed; a model scored on every source.
- `store`: one JSON line per finished run (what a restart skips).
- `timing`: what the speed benchmarks share: the matmul ceiling, FLOPs,
  per-step times and interleaved rounds.
- `report`: `results.json`, `results.md`, `dice_vs_labels.png`, and the
  machine, interval and over-seed summaries every results writer uses.

The library (`data` ... `export`) does not import this package.
"""
