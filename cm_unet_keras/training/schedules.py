"""Learning-rate schedules.

Hand-written rather than `keras.optimizers.schedules.CosineDecay(warmup_steps=...)`:
Keras computes the warm-up as `(target - start) * fraction + start`, which
differs from `WarmupCosine` in the last bits (57 of the 2,001 learning rates
of the default fine-tuning schedule, step 0 included), so switching would
change every run's numbers, and saved checkpoints name this class.
"""

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cm_unet_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `peak * warmup_start_factor` to `peak`, then cosine to `peak * final_factor`.

    Args:
        peak: the learning rate at the end of warm-up.
        total_steps: length of the whole schedule, in optimizer steps.
        warmup_steps: length of the warm-up.
        warmup_start_factor: the warm-up starts at this fraction of `peak`
            (the paper's pretraining: 1e-4).
        final_factor: the cosine ends at this fraction of `peak`.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, warmup_start_factor=1e-4, final_factor=0.0):
        self.peak = float(peak)
        self.total_steps = int(max(total_steps, 1))
        self.warmup_steps = int(min(max(warmup_steps, 0), self.total_steps))
        self.warmup_start_factor = float(warmup_start_factor)
        self.final_factor = float(final_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        warm_fraction = tf.minimum(step / warmup, 1.0)
        warm_lr = self.peak * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * warm_fraction)
        decay_length = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_length, 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        decay_lr = self.peak * (self.final_factor + (1.0 - self.final_factor) * cosine)
        return tf.where(step < self.warmup_steps, warm_lr, decay_lr)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "final_factor": self.final_factor,
        }
