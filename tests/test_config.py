"""The config home: one dataclass per job, flags built from their fields,
the pretrainer's settings written out, and the old import paths."""

import argparse
import dataclasses
from typing import Optional

import pytest

from cm_unet_keras.config import MASK_RATIO, FinetuneConfig, PretrainConfig, setting


def test_a_field_declared_with_setting_is_a_flag_with_its_type_choices_and_default():
    from cm_unet_keras.cli import _config_flags, _flag_values

    @dataclasses.dataclass
    class Job:
        rate: float = setting(0.5, "a rate")
        steps: Optional[int] = setting(None, "steps", none="all of them")
        mode: str = setting("fast", "the mode", choices=("fast", "slow"))
        loud: bool = setting(False, "say more")
        sizes: tuple = setting((1, 2), "sizes", item=int)
        hidden: int = 3  # not a flag

    parser = argparse.ArgumentParser()
    names = ("rate", "steps", "mode", "loud", "sizes")
    _config_flags(parser, Job, names)
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["rate"] == "a rate (default: 0.5)" and helps["steps"] == "steps (default: all of them)"
    assert helps["loud"] == "say more (default: off)" and helps["sizes"] == "sizes (default: 1 2)"
    given = parser.parse_args(["--rate", "1e-3", "--mode", "slow", "--loud", "--sizes", "3", "4"])
    assert _flag_values(given, names) == {"rate": 1e-3, "steps": None, "mode": "slow", "loud": True, "sizes": [3, 4]}
    assert _flag_values(parser.parse_args([]), names) == dict.fromkeys(names)  # None: the recipe's value stays
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])


def test_the_pretrainer_gets_every_setting_of_the_job_by_name():
    from cm_unet_keras.models.pretrainer import ContrastiveMaskedPretrainer

    config = PretrainConfig(base_filters=4, depth=2, projection_dim=8, mask_ratio=0.5, seed=7)
    pretrainer = ContrastiveMaskedPretrainer(**config.pretrainer_kwargs())
    assert pretrainer.get_config() == {**config.pretrainer_kwargs(), "name": "contrastive_masked_pretrainer"}
    assert pretrainer.mask_ratio == 0.5
    # mask_ratio's default is written once.
    assert PretrainConfig().mask_ratio == MASK_RATIO == ContrastiveMaskedPretrainer(base_filters=4, depth=2).mask_ratio


def test_each_name_has_one_import_path():
    # The package has no outside users yet, so the old paths were removed
    # rather than kept as aliases (issue 32, item 15).
    import importlib
    from pathlib import Path

    import cm_unet_keras
    from cm_unet_keras import config, experiments, tuning

    package = Path(cm_unet_keras.__file__).parent
    for old in ("study.py", "training/config.py"):
        assert not (package / old).exists(), f"cm_unet_keras/{old} is still there"
    assert config.FinetuneConfig is cm_unet_keras.FinetuneConfig
    assert config.PretrainConfig is cm_unet_keras.PretrainConfig
    assert tuning.TuneConfig is config.TuneConfig
    study = importlib.import_module("cm_unet_keras.experiments.study")
    assert study is experiments.study
    # experiments.study no longer re-exports what lives elsewhere.
    for name in ("StudyConfig", "INITS", "mean_interval", "frangi_vesselness", "cpu_config", "study_config"):
        assert not hasattr(study, name), f"experiments.study still re-exports {name}"
    assert FinetuneConfig.threshold == 0.5  # a setting's default is still the class attribute


