"""Precision policy and distribution strategy, chosen for the machine.

Precision (overridable with `precision=` / `--precision`): the machine's
fastest, as `models.precision.resolve_precision` chooses it (inference
chooses with it too).

Strategies: `MultiWorkerMirroredStrategy` when `TF_CONFIG` names a cluster,
`MirroredStrategy` on several GPUs, the default strategy otherwise.
"""

import json
import os

import keras
import tensorflow as tf

from cm_unet_keras.models.precision import resolve_precision


def set_precision(precision="auto"):
    """Set the global Keras dtype policy; returns the policy name used."""
    policy = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def cluster_from_tf_config():
    """The cluster spec from `TF_CONFIG`, or None."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        cluster = json.loads(raw).get("cluster")
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    return cluster or None


_STRATEGY = []


def choose_strategy():
    """The distribution strategy for this process (see module docstring).

    Call it before any other TensorFlow operation runs: a multi-worker
    strategy configures collective ops, which TensorFlow allows only at
    program start-up. The strategy is made once per process and reused.
    """
    if not _STRATEGY:
        cluster = cluster_from_tf_config()
        if cluster and sum(len(tasks) for tasks in cluster.values()) > 1:
            _STRATEGY.append(tf.distribute.MultiWorkerMirroredStrategy())
            _patch_keras_for_multi_worker()
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            _STRATEGY.append(tf.distribute.MirroredStrategy())
        else:
            return tf.distribute.get_strategy()
    return _STRATEGY[0]


def _patch_keras_for_multi_worker():
    """Let Keras 3 `fit` run under MultiWorkerMirroredStrategy.

    Before training, Keras 3 (up to 3.15 at least) builds the model from the
    first batch, which it averages across replicas with an eager
    `strategy.reduce`; MultiWorkerMirroredStrategy cannot run that eagerly
    and `fit` fails ("Attempt to convert a value (PerReplica...)",
    keras-team/keras#20585). The batch only provides shapes, so the local
    replica's part does as well. Applied only when a multi-worker strategy
    is in use.

    The step's logs (scalars) are then averaged with `axis=0`, which fails on
    0-D values under the same strategy; they are averaged whole instead.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None)
                if isinstance(value, tf.distribute.DistributedValues) else value,
                values,
            )
        return original_reduce(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica

    original = trainer.TensorFlowTrainer._maybe_symbolic_build

    def symbolic_build_from_local_batch(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda value: self.distribute_strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues) else value,
                    batch,
                )
                break
        return original(self, iterator=None, data_batch=data_batch)

    trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build_from_local_batch


def is_chief():
    """True on the process that writes files (always, outside a cluster)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    kind, index = task.get("type", "chief"), task.get("index", 0)
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in (cluster_from_tf_config() or {}))
