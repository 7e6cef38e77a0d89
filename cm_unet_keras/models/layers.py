"""Layers of the U-Net that Keras does not provide as we need them."""

import keras


@keras.saving.register_keras_serializable(package="cm_unet_keras")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step is one fused kernel.

    It keeps Keras' class name on purpose: Keras files a layer's weights
    under its class name (`layers/batch_normalization_3/vars`), so weight
    files, checkpoints, pretraining runs and presets written with Keras'
    layer load into U-Nets built with this one, and the reverse.

    Keras 3 normalises a training batch with a dozen element-wise ops (casts
    to float32 and back, moments, the normalisation), and the gradient is as
    many again: on a 2-core CPU they took more than half of the small
    U-Net's training step (`benchmarks/throughput/train_step.md`).
    TensorFlow's fused batch normalisation (oneDNN on CPU, cuDNN on GPU)
    computes the same thing, statistics in float32 for bfloat16 inputs, in
    one op forward and one backward.

    Same variables, same configuration and the same moving-average update as
    the Keras layer (momentum on the biased batch variance); outside
    training, and wherever the fused kernel does not apply (another backend,
    inputs that are not NHWC images, a mask, renormalisation, or
    synchronised statistics over several replicas), it *is* the Keras layer.
    The only difference in results is the kernel's epsilon floor of
    1.001e-5 (the layer's 1e-5 otherwise), which changes normalised values
    by less than 1e-6 of a unit-variance channel.
    """

    def _fused_applies(self, inputs, training, mask):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return False
        if keras.backend.backend() != "tensorflow" or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return False
        if not (self.scale and self.center):
            return False
        if self.synchronized:
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            if context is None or context.num_replicas_in_sync != 1:
                return False
        return True

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            x,
            tf.convert_to_tensor(self.gamma, tf.float32),
            tf.convert_to_tensor(self.beta, tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the Bessel-corrected variance for the running
        # estimate; Keras (and the layer's checkpoints) average the biased one.
        count = tf.cast(tf.size(x, out_type=tf.int64) // tf.cast(tf.shape(x)[-1], tf.int64), tf.float32)
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)
