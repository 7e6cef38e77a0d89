"""The study's presets (`cpu`, `gpu_paper`, `quick`): configurations only.

Kept apart from `experiments.study` (which imports the training code) so
that `cm-unet study --help` shows their defaults without TensorFlow.
"""

from cm_unet_keras.config import (
    PRETRAIN_RECIPES,
    FinetuneConfig,
    PretrainConfig,
    StudyConfig,
    build_config,
    split_init,
)


def cpu_config():
    """The study on 2 CPU cores: issue 13's pretraining, converged fine-tuning.

    Pretraining (each variant): the built-in `cpu` recipe
    (`recipes/pretrain_cpu.yaml`): a 16-wide, 4-level U-Net on 128 px
    "crops" views (two overlapping crops, intensity jitter, blur) from a
    256 px working size, batch 32, lr 1e-3, 125 epochs of 48 steps (6,000
    steps; about 75 minutes a variant at the 0.7-0.8 s/step measured on
    the 2-core AVX512_BF16 build machine beside other jobs).
    Fine-tuning: the `FinetuneConfig` defaults (batch 8 of 128 px patches,
    AdamW 2e-3, warm-up + cosine, Dice + BCE, all N pairs train, last epoch
    kept), the same for every init: 2,000 steps at N = 3 and 10 and 4,000 at
    N = 30, where 2,000 are not converged (scratch +0.016, pretrained +0.006
    from 2,000 to 4,000; `benchmarks/finetune_budget/results.md`).
    Seeds 0-2, and 0-4 at N = 3 (its subsets spread the most). Inits:
    `cmunet`, `scratch`, `mae_only` and Frangi (`contrastive_only` runs with
    `--inits`). 33 fine-tunes, 84,000 steps: about 5.4 hours at the
    0.23 s/step measured with Keras' BatchNorm; the fused BatchNorm made
    the step 1.34x faster on a quiet machine (0.131 s in
    `benchmarks/throughput/train_step.md`, before the pipeline and
    evaluation): about 3 to 4 hours, an estimate (the N = 3 part, 20,000
    steps, took 95 minutes on 2 cores shared with two other jobs).
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
        for init in inits:
            split_init(init)
        config.inits = tuple(inits)
    return config
