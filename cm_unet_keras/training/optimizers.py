"""AdamW with a smaller learning rate for transferred (pretrained) layers.

Fine-tuning a pretrained U-Net at the fresh head's learning rate moved its
encoder 2-3 times further than pretraining had (issue 12); discriminative
learning rates (ULMFiT, Howard & Ruder 2018; layer-wise decay in BEiT/MAE
fine-tuning) keep what pretraining learned while the head is trained. Keras'
optimizers take one learning rate, so `update_step` scales it per variable.
"""

import keras


@keras.saving.register_keras_serializable(package="cm_unet_keras")
class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW whose variables in layers `slow_layers` step at `slow_factor` x the learning rate.

    Args:
        slow_layers: names of the layers whose variables (a variable's path
            names its layer) get the reduced learning rate.
        slow_factor: their learning-rate multiplier (1.0: plain AdamW).
        **kwargs: `keras.optimizers.AdamW` arguments.

    Weight decay is applied at the full learning rate (it is 1e-4 x lr, a
    shrinkage of 2e-7 per step at the default lr).
    """

    def __init__(self, slow_layers=(), slow_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.slow_layers = sorted(set(slow_layers))
        self.slow_factor = float(slow_factor)
        self._slow_keys = set()

    def build(self, variables):
        super().build(variables)
        # update_step receives the backend's variable (a tf.Variable, which
        # has no Keras path): remember the slow ones by the optimizer's key.
        slow = frozenset(self.slow_layers)
        self._slow_keys = {self._var_key(v) for v in variables if not slow.isdisjoint(v.path.split("/"))}

    def update_step(self, gradient, variable, learning_rate):
        if self.slow_factor != 1.0 and self._var_key(variable) in self._slow_keys:
            learning_rate = learning_rate * self.slow_factor
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"slow_layers": self.slow_layers, "slow_factor": self.slow_factor})
        return config
