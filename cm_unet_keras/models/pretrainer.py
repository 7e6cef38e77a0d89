"""The CM-UNet pretrainer: contrastive masked autoencoding of a U-Net.

Two branches train the U-Net's encoder and decoder on unlabeled angiograms:

- Reconstruction: 65% of the 16x16 patches of the online view are set to 0,
  the U-Net (encoder, decoder with skips) reconstructs the image through a
  1x1 `reconstruction_head`, and the loss is the MSE to the unmasked view,
  normalised per patch (mean and variance of each 16x16 patch, as MAE and
  CMAE), averaged over the masked patches only.
- Contrastive: the online bottleneck, pooled, goes through a projector and
  a predictor MLP; an EMA copy of the encoder and projector (the target,
  momentum 0.996, no gradient) embeds the unmasked, shifted, noisy target
  view; InfoNCE between the two (temperature 0.07, scaled by 2 * tau as in
  MoCo v3) with the target embeddings of the whole global batch, gathered
  across replicas, as negatives.

The total loss is `rc_weight * L_rc + ct_weight * L_ct`; setting one weight
to 0 gives the MAE-only or contrastive-only ablation with the same code.

Deviations from the original PyTorch code (CamilleChallier/Contrastive-
Masked-UNet), each on purpose:

1. Every sample gets its own mask (the original applied sample 0's mask to
   the whole batch while its loss used each sample's own mask). Masks are
   count-exact (`round(mask_ratio * patches)` patches, as MAE's argsort of
   uniform noise) and drawn from a stateless seed per sample, so a sample
   gets the same mask whatever its batch, replica or resume point.
2. The contrastive path pools the bottleneck globally and feeds a small
   projector (`bottleneck width -> 4x hidden -> 256`). The original ran a
   second full decoder, flattened a 224x224 map into a 50,176-wide projector
   (77.5M parameters) and so only worked at 224 px.
3. The target branch has no 1x1 "adapter": the original re-created it with
   fresh random weights on every forward call (never trained, never saved).
   Target = EMA encoder + EMA projector, as CMAE describes.
4. The reconstruction target is normalised per patch, not per image row.
5. BatchNorm statistics are synchronised across replicas
   (`synchronized=True`), so that a global batch gives the same losses on 1
   or N devices; the original used plain per-GPU BatchNorm.
6. The EMA momentum is constant (the paper's 0.996); weights are updated
   after the optimizer step, as the original's `MomentumUpdateHook`.

All losses are computed in float32 whatever the compute dtype. The patch
masks are drawn by `cm_unet_keras.data.masking`, the losses are
`cm_unet_keras.models.losses`.
"""

import keras
import tensorflow as tf

from cm_unet_keras.config import MASK_RATIO
from cm_unet_keras.data.masking import apply_patch_mask, sample_patch_masks
from cm_unet_keras.models.losses import info_nce, masked_reconstruction_loss
from cm_unet_keras.models.pretrainer_networks import pretrainer_networks
# The files of a pretraining run that hold its result: the pretrainer's
# weights (without optimizer state), and beside them its `get_config()`,
# which is what is needed to rebuild it and load them. Named where U-Net
# files are loaded (models.saving), which must not import this module.
from cm_unet_keras.models.saving import PRETRAINED_WEIGHTS, PRETRAINER_CONFIG  # noqa: F401


def _synchronize_batch_norm(model):
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _replica_context():
    """(replica id, number of replicas) of the running step."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int32), 1
    return tf.cast(context.replica_id_in_sync_group, tf.int32), context.num_replicas_in_sync


@keras.saving.register_keras_serializable(package="cm_unet_keras")
class ContrastiveMaskedPretrainer(keras.Model):
    """Contrastive masked pretraining of a `CMUNet` (the CM-UNet method).

    Owns a U-Net (`self.unet`, whose encoder and decoder fine-tuning takes
    over), a 1x1 `reconstruction_head`, a `projector` and a `predictor`, and
    the EMA target (`target_encoder`, `target_projector`). Train with
    `fit()` on batches of `{"online": [B,S,S,1], "target": [B,S,S,1],
    "sample_index": int64 [B]}` (see `cm_unet_keras.data.views`); the
    sample index seeds each sample's mask. Without it the mask is seeded by
    the optimizer step and the sample's place in the global batch.

    Compile with an optimizer only; metrics `loss`, `reconstruction_loss`,
    `contrastive_loss` and `contrastive_accuracy` (top-1 of the InfoNCE
    logits) are built in and reset every epoch.

    Args:
        base_filters: U-Net width (see `CMUNet`).
        depth: U-Net levels.
        patch_size: side of the masked patches; the views' sides must be
            multiples of it and of `2**depth`.
        mask_ratio: fraction of patches masked in the online view.
        projection_dim: output width of projector and predictor.
        projection_hidden_dim: hidden width of both MLPs; None gives 4x the
            bottleneck width.
        ema_momentum: momentum of the target's moving average.
        temperature: InfoNCE temperature tau.
        rc_weight: weight of the reconstruction loss.
        ct_weight: weight of the contrastive loss.
        seed: seed of the masks.
        **kwargs: passed to `keras.Model`.

    Example:
    ```python
    pretrainer = ContrastiveMaskedPretrainer(base_filters=16, depth=4)
    pretrainer.compile(optimizer=keras.optimizers.AdamW(1e-4))
    pretrainer.fit(two_view_dataset, epochs=10, steps_per_epoch=100)
    unet = pretrainer.unet  # encoder + decoder to fine-tune
    ```

    Reference:
        Challier et al., "CM-UNet: A Self-Supervised Learning-Based Model for
        Coronary Artery Segmentation in X-Ray Angiography", 2025.
        Huang et al., "Contrastive Masked Autoencoders are Stronger Vision
        Learners" (CMAE), 2023. He et al., "Masked Autoencoders Are Scalable
        Vision Learners", 2022. Chen et al., "An Empirical Study of Training
        Self-Supervised Vision Transformers" (MoCo v3), 2021.
    """

    def __init__(
        self,
        base_filters=16,
        depth=4,
        patch_size=16,
        mask_ratio=MASK_RATIO,
        projection_dim=256,
        projection_hidden_dim=None,
        ema_momentum=0.996,
        temperature=0.07,
        rc_weight=1.0,
        ct_weight=1.0,
        seed=0,
        **kwargs,
    ):
        kwargs.setdefault("name", "contrastive_masked_pretrainer")
        super().__init__(**kwargs)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 <= ema_momentum <= 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1], got {ema_momentum}")
        if rc_weight < 0 or ct_weight < 0 or rc_weight + ct_weight == 0:
            raise ValueError(
                f"rc_weight and ct_weight must be >= 0 and not both 0, got {rc_weight}, {ct_weight}"
            )
        # Online network (U-Net, reconstruction head, projector, predictor)
        # and the EMA target (encoder and projector, no gradient).
        networks = pretrainer_networks(base_filters, depth, projection_dim, projection_hidden_dim)
        self.unet = networks["unet"]
        self.online_network = networks["online_network"]
        self.projector, self.predictor = networks["projector"], networks["predictor"]
        self.target_encoder, self.target_projector = networks["target_encoder"], networks["target_projector"]
        for model in (self.online_network, self.projector, self.predictor,
                      self.target_encoder, self.target_projector):
            _synchronize_batch_norm(model)
        for target, online in self._ema_pairs():
            target.assign(online)
        # Every weight exists now (the sub-networks are functional).
        self.built = True

        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.contrastive_tracker = keras.metrics.Mean(name="contrastive_loss")
        self.accuracy_tracker = keras.metrics.Mean(name="contrastive_accuracy")
        self.loss_tracker = keras.metrics.Mean(name="loss")

        # === Config ===
        self.base_filters = base_filters
        self.depth = depth
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.projection_dim = projection_dim
        self.projection_hidden_dim = projection_hidden_dim
        self.ema_momentum = ema_momentum
        self.temperature = temperature
        self.rc_weight = rc_weight
        self.ct_weight = ct_weight
        self.seed = seed

    # --- variables ------------------------------------------------------------
    @property
    def online_variables(self):
        """What the optimizer trains: U-Net, reconstruction head, projector, predictor."""
        return (
            self.online_network.trainable_variables
            + self.projector.trainable_variables
            + self.predictor.trainable_variables
        )

    def _ema_pairs(self):
        """(target, online) trainable variables, matched by layer name.

        BatchNorm moving statistics are not averaged: the target runs in
        training mode (batch statistics), as the original's target did.
        """
        pairs = []
        for target_model, online_model in (
            (self.target_encoder, self.online_network),
            (self.target_projector, self.projector),
        ):
            for layer in target_model.layers:
                if not layer.trainable_weights:
                    continue
                online = online_model.get_layer(layer.name)
                pairs += list(zip(layer.trainable_weights, online.trainable_weights))
        return pairs

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker,
                self.contrastive_tracker, self.accuracy_tracker]

    # --- forward pieces -----------------------------------------------------------
    def call(self, inputs, training=False):
        """Reconstruction of (already masked) angiograms `[B, H, W, 1]`."""
        return self.online_network(inputs, training=training)["reconstruction"]

    def sample_masks(self, sample_index, image_shape):
        """Patch masks `[B, rows, cols]` of the samples numbered `sample_index`."""
        return sample_patch_masks(self.seed, sample_index, image_shape, self.patch_size, self.mask_ratio)

    def mask_views(self, online_view, sample_index):
        """(masked view, patch mask) of online views: masked pixels set to 0."""
        patch_mask = self.sample_masks(sample_index, online_view.shape[1:3])
        return apply_patch_mask(online_view, patch_mask, self.patch_size), patch_mask

    def _fallback_sample_index(self, batch_size):
        replica, replicas = _replica_context()
        step = tf.cast(self.optimizer.iterations if self.optimizer else 0, tf.int64)
        first = step * batch_size * replicas + tf.cast(replica, tf.int64) * batch_size
        return first + tf.range(batch_size, dtype=tf.int64)

    def _unpack(self, data):
        if not isinstance(data, dict) or "online" not in data or "target" not in data:
            raise ValueError(
                "the pretrainer expects batches {'online': views, 'target': views, "
                "'sample_index': int64 (optional)}"
            )
        online = tf.cast(data["online"], self.compute_dtype)
        target = tf.cast(data["target"], self.compute_dtype)
        sample_index = data.get("sample_index")
        if sample_index is None:
            sample_index = self._fallback_sample_index(tf.shape(online)[0])
        return online, target, sample_index

    def target_embedding(self, target_view, training=True):
        """EMA target projection of the target views, without gradient."""
        features = self.target_encoder(target_view, training=training)
        pooled = tf.reduce_mean(tf.cast(features, tf.float32), axis=[1, 2])
        return tf.stop_gradient(tf.cast(self.target_projector(pooled, training=training), tf.float32))

    def compute_losses(self, online_view, target_embedding, sample_index, training=True):
        """Reconstruction and contrastive losses of this replica's samples.

        Args:
            online_view: `[B, S, S, 1]` unmasked online views.
            target_embedding: `[B, D]` target projections (`target_embedding`).
            sample_index: int64 `[B]`, seeds of the masks.
            training: BatchNorm mode of the online network.

        Returns:
            dict of float32 scalars: `loss`, `reconstruction_loss`,
            `contrastive_loss`, `contrastive_accuracy` (means over this
            replica's samples; every sample has the same number of masked
            patches, so the mean over replicas is the global mean).
        """
        masked_view, patch_mask = self.mask_views(online_view, sample_index)
        outputs = self.online_network(masked_view, training=training)

        reconstruction_loss = masked_reconstruction_loss(
            outputs["reconstruction"], online_view, patch_mask, self.patch_size
        )

        pooled = tf.reduce_mean(tf.cast(outputs["bottleneck"], tf.float32), axis=[1, 2])
        query = self.predictor(self.projector(pooled, training=training), training=training)
        keys, labels = self._gather_keys(target_embedding)
        contrastive, correct = info_nce(query, keys, labels, self.temperature)
        contrastive_loss = tf.reduce_mean(contrastive)

        loss = self.rc_weight * reconstruction_loss + self.ct_weight * contrastive_loss
        return {
            "loss": loss,
            "reconstruction_loss": reconstruction_loss,
            "contrastive_loss": contrastive_loss,
            "contrastive_accuracy": tf.reduce_mean(correct),
        }

    def _gather_keys(self, target_embedding):
        """All replicas' target embeddings, and each local query's positive."""
        context = tf.distribute.get_replica_context()
        local = tf.shape(target_embedding)[0]
        replica, replicas = _replica_context()
        keys = target_embedding
        if context is not None and replicas > 1:
            keys = context.all_gather(target_embedding, axis=0)
        labels = replica * local + tf.range(local)
        return keys, labels

    # --- steps ----------------------------------------------------------------
    def train_step(self, data):
        online_view, target_view, sample_index = self._unpack(data)
        target_embedding = self.target_embedding(target_view, training=True)
        variables = self.online_variables
        with tf.GradientTape() as tape:
            losses = self.compute_losses(online_view, target_embedding, sample_index, training=True)
            # Gradients are summed over replicas: divide so that they are
            # those of the global-batch mean.
            _, replicas = _replica_context()
            scaled_loss = self.optimizer.scale_loss(losses["loss"] / replicas)
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        self.update_target()
        return self._track(losses)

    def test_step(self, data):
        online_view, target_view, sample_index = self._unpack(data)
        target_embedding = self.target_embedding(target_view, training=False)
        losses = self.compute_losses(online_view, target_embedding, sample_index, training=False)
        return self._track(losses)

    def _track(self, losses):
        self.loss_tracker.update_state(losses["loss"])
        self.reconstruction_tracker.update_state(losses["reconstruction_loss"])
        self.contrastive_tracker.update_state(losses["contrastive_loss"])
        self.accuracy_tracker.update_state(losses["contrastive_accuracy"])
        return {metric.name: metric.result() for metric in self.metrics}

    def update_target(self):
        """target <- m * target + (1 - m) * online, on every replica."""
        momentum = self.ema_momentum
        pairs = [(target.value, online.value) for target, online in self._ema_pairs()]

        def moving_average(target, online):
            return target.assign(momentum * target + (1.0 - momentum) * online)

        def update(strategy, pairs):
            for target, online in pairs:
                strategy.extended.update(target, moving_average, args=(online,), group=False)

        if tf.distribute.in_cross_replica_context():
            update(tf.distribute.get_strategy(), pairs)
        else:
            tf.distribute.get_replica_context().merge_call(update, args=(pairs,))

    def get_config(self):
        return dict(base_filters=self.base_filters, depth=self.depth, patch_size=self.patch_size,
                    mask_ratio=self.mask_ratio, projection_dim=self.projection_dim,
                    projection_hidden_dim=self.projection_hidden_dim, ema_momentum=self.ema_momentum,
                    temperature=self.temperature, rc_weight=self.rc_weight, ct_weight=self.ct_weight,
                    seed=self.seed, name=self.name)

    @classmethod
    def from_config(cls, config):
        return cls(**config)
