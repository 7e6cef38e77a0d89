"""One worker of the two-process MultiWorkerMirroredStrategy test.

    python tests/multiworker_job.py INDEX PORT DATA OUT

Runs a few pretraining steps, then a few fine-tuning steps from them, of a
tiny U-Net as worker INDEX of a two-worker cluster on 127.0.0.1 (ports PORT
and PORT+1), and saves its final weights to OUT/pretrained_INDEX.npz and
OUT/weights_INDEX.npz. The same command shape runs on a real cluster,
with TF_CONFIG naming the hosts.
"""

import json
import os
import sys

index, port, data, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]}, "task": {"type": "worker", "index": index}}
)

import numpy as np  # noqa: E402

from cm_unet_keras.config import FinetuneConfig, PretrainConfig  # noqa: E402
from cm_unet_keras.data.layouts import index_images_masks, index_unlabeled  # noqa: E402
from cm_unet_keras.training.finetune import finetune  # noqa: E402
from cm_unet_keras.training.pretrain import pretrain  # noqa: E402

# Each worker is given its own run folders so that the test can see who
# writes; on a cluster all name the same shared folder, and only the chief
# (worker 0) writes to it.
pretrain_config = PretrainConfig(
    base_filters=4, depth=2, image_size=32, working_size=64, batch_size=4, epochs=1, steps_per_epoch=2,
    warmup_epochs=0, precision="float32",
)
pretrained = pretrain(pretrain_config, index_unlabeled([f"{data}/images"]), f"{out}/pretrain_{index}", verbose=0)
np.savez(f"{out}/pretrained_{index}.npz", *pretrained["model"].get_weights())

config = FinetuneConfig(
    base_filters=4, depth=2, epochs=2, steps_per_epoch=3, batch_size=4, patch_size=32, precision="float32",
    init=f"{out}/pretrain_0",
)
result = finetune(config, index_images_masks(f"{data}/images", f"{data}/masks"), f"{out}/finetune_{index}", verbose=0)
np.savez(f"{out}/weights_{index}.npz", *result["model"].get_weights())
print(f"worker {index} done")
