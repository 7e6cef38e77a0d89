"""recipes/pretrain_jax.py: the angiograms it packs, the run folders it imports.

Its `train` step runs on Keras' JAX backend (an accelerator without
TensorFlow) and is not run here; what the package depends on is that the
packed angiograms are the decoded ones and that an imported run loads as a
pretraining run, every weight where it was.
"""

import json

import numpy as np

from cm_unet_keras.data.layouts import index_unlabeled
from cm_unet_keras.data.views import load_unlabeled
from cm_unet_keras.models.loading import load_pretrainer
from cm_unet_keras.training.transfer import load_initial_weights


def test_packed_angiograms_are_the_decoded_ones_to_jpeg_precision(tmp_path, shared_data, recipe_module):
    records = index_unlabeled([shared_data / "xca_vessels" / "train" / f"{i}.png" for i in (1, 2, 3)])
    decoded = load_unlabeled(records, working_size=128, cache_dir=tmp_path / "cache")
    cache = next((tmp_path / "cache").glob("angiograms_*.npz"))
    module = recipe_module("pretrain_jax")
    module.pack(cache, tmp_path / "packed.npz")
    images, scale, offset = module.unpack(tmp_path / "packed.npz")
    assert images.shape == (3, 128, 128) and images.dtype == np.uint8
    restored = images.astype(np.float32) / scale - offset
    original = decoded.images[..., 0].astype(np.float32)
    error = np.sqrt(np.mean((restored - original) ** 2, axis=(1, 2)))
    # 8 bits over [-5.3, 5.3] and JPEG at quality 95: a few hundredths of a z-score unit.
    assert np.all(error < 0.1), error
    assert np.corrcoef(restored.ravel(), original.ravel())[0, 1] > 0.999


def test_an_imported_run_loads_as_a_pretraining_run_with_every_weight_in_place(tmp_path, recipe_module):
    module = recipe_module("pretrain_jax")
    networks = module.build_networks(base_filters=4, depth=2)
    rng = np.random.default_rng(0)
    for model in networks.values():
        for layer in model.layers:
            if layer.weights:
                layer.set_weights([w + rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    source = tmp_path / "trained"
    source.mkdir()
    for name, keys in module.WEIGHTS.items():
        np.savez(source / f"{name}.npz", **module.layer_weights(networks, keys))
    settings = dict(base_filters=4, depth=2, patch_size=16, mask_ratio=0.65, ema_momentum=0.996,
                    temperature=0.07, rc_weight=1.0, ct_weight=1.0, seed=3, steps_done=2,
                    history=[{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.2}])
    (source / module.SETTINGS).write_text(json.dumps(settings))

    module.import_run(source, tmp_path / "run")
    pretrainer = load_pretrainer(tmp_path / "run" / "pretrained.weights.h5")
    assert pretrainer.seed == 3 and pretrainer.base_filters == 4
    for key, model in networks.items():
        loaded = getattr(pretrainer, key)
        for layer in model.layers:
            for mine, theirs in zip(layer.get_weights(), loaded.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(mine, theirs)
    assert (tmp_path / "run" / "history.csv").read_text().splitlines()[-1] == "2,1.2"

    # Fine-tuning takes the online U-Net from the run folder.
    from cm_unet_keras import CMUNet

    unet = CMUNet(base_filters=4, depth=2)
    load_initial_weights(unet, str(tmp_path / "run"))
    online = networks["online_network"]
    conv = "encoder_level0_conv1"
    np.testing.assert_array_equal(unet.get_layer(conv).get_weights()[0], online.get_layer(conv).get_weights()[0])
