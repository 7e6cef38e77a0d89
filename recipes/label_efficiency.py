"""Label-efficiency study on the real XCA angiograms (issue 4), in resumable stages.

Stage `pretrain`: the three pretraining variants (cmunet, mae_only,
contrastive_only) on ARCADE + the 30 XCA training images without masks.
Stage `sweep`: fine-tunes with N in {3, 10, 30} labelled pairs x seeds
{0, 1, 2} x init {cmunet, scratch, mae_only, contrastive_only}, plus a tuned
Frangi filter, each evaluated on the 10 held-out pairs of
`recipes/xca_split.json`. Rerunning skips what is finished. The protocol is
documented in `cm_unet_keras/experiments/study.py`.

    python recipes/label_efficiency.py --stage pretrain   # 34 min on 2 AVX512_BF16 cores
    python recipes/label_efficiency.py --stage sweep      # 49 min there (36 fine-tunes + 9 Frangi fits)
    python recipes/label_efficiency.py --quick --out /tmp/le   # smoke test, about a minute
    python recipes/label_efficiency.py --gpu-paper --runs runs/le_gpu --out benchmarks/label_efficiency_gpu

Writes `results.json`, `results.md` and `dice_vs_labels.png` to `--out`
(default `benchmarks/label_efficiency`). Same as `cm-unet study`.
"""

import sys

from cm_unet_keras.cli import main

if __name__ == "__main__":
    sys.exit(main(["study"] + sys.argv[1:]))
