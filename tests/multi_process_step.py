"""Trains the tiny captioner a few data-parallel steps over 8 CPU devices,
either as one of two processes (4 devices each, joined by
`keras.distribution.initialize()`, Gloo collectives, each reading its own
data shard) or as one process holding all 8 devices and both shards:

    python -m tests.multi_process_step OUT_DIR two PORT PROCESS_ID
    python -m tests.multi_process_step OUT_DIR one

with KERAS_BACKEND=jax; the device count is set here, before JAX starts.
Writes OUT_DIR/<name>.json: the losses, the shard read, and a checksum of
the updated weights. Used by tests/test_multi_process.py.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

STEPS = 3
GLOBAL_BATCH = 8
NUM_PROCESSES = 2
LEARNING_RATE = 1e-3


def shard_batches(shard_index, shard_count, batch_size):
    """This shard's batches, from the pretraining pipeline (no augmentation,
    so the single-process run can read the very same rows)."""
    from keras_ov2.data import SyntheticScenes
    from keras_ov2.data.pipeline import make_pretraining_dataset

    dataset = make_pretraining_dataset(
        SyntheticScenes(4 * GLOBAL_BATCH, image_size=64, seed=0),
        image_size=64,
        batch_size=batch_size,
        caption_field="short_caption",
        augment_images=False,
        shard_index=shard_index,
        shard_count=shard_count,
        read_threads=1,
    )
    return iter(dataset)


def main(out_dir, mode, port=None, process_id=None):
    devices = 8 if mode == "one" else 8 // NUM_PROCESSES
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import jax

    jax.config.update("jax_platforms", "cpu")
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)  # same weights and masking in every process
    if mode == "two":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(f"127.0.0.1:{port}", NUM_PROCESSES, int(process_id))

    from keras_ov2.distribution import data_shard
    from keras_ov2.distribution import make_distribution
    from keras_ov2.distribution import per_host_batch_size
    from tests.test_captioner import tiny_captioner

    assert len(keras.distribution.list_devices()) == 8
    distribution = make_distribution({"data": 8}, "data")
    shard_index, shard_count = data_shard(distribution)
    batch_size = per_host_batch_size(GLOBAL_BATCH, distribution)
    with distribution.scope():
        captioner = tiny_captioner()
        captioner.compile(learning_rate=LEARNING_RATE, total_steps=STEPS, warmup_steps=1)
        if mode == "two":
            shards = [shard_batches(shard_index, shard_count, batch_size)]
        else:  # both hosts' shards, host 0's rows first, as the global array has them
            shards = [shard_batches(i, NUM_PROCESSES, GLOBAL_BATCH // NUM_PROCESSES)
                      for i in range(NUM_PROCESSES)]
        losses, rows_read = [], []
        for _ in range(STEPS):
            parts = [next(shard) for shard in shards]
            images = np.concatenate([p[0] for p in parts])
            captions = np.concatenate([p[1] for p in parts])
            rows_read.extend(hashlib.md5(image.tobytes()).hexdigest() for image in images)
            losses.append(float(captioner.train_on_batch(images, captions)))
    # Data-parallel weights are replicated: each process holds them whole.
    weights = [np.asarray(v.value.addressable_data(0)) for v in captioner.trainable_weights]
    name = f"process_{process_id}" if mode == "two" else "one_process"
    result = {
        "losses": losses,
        "shard": [shard_index, shard_count],
        "batch_size": batch_size,
        "rows": rows_read,  # a digest of each image read
        "weight_checksum": float(sum(np.abs(w).sum(dtype="float64") for w in weights)),
        "process_count": jax.process_count(),
    }
    (Path(out_dir) / f"{name}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
