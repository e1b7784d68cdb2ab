"""A tiny checkpointed `pretrain` that logs every step, for tests/test_checkpoint.py:
`python -m tests.checkpoint_run PRESET CHECKPOINT_DIR OUTPUT_DIR LOG STAGES [SECONDS_PER_STEP]`
(STAGES as `ov2 pretrain --stages`).

Each step's log line has the stage's image size, the step within it (the optimizer's
counter, which a resume restores), the step's loss, the learning rate and a
fingerprint of the batch trained on: the n-th batch of the iterator `fit`
trains from (Keras makes that one last, after peeking with another).
"""

import hashlib
import json
import sys
import time

import grain
import keras
import numpy as np

import keras_ov2
from keras_ov2.cli.pretrain import parse_stages
from keras_ov2.training import pretrain
from keras_ov2.training import setup

IMAGE_SIZE = 56  # 4 x 4 patches of 14 px
CHECKPOINT_EVERY = 4


def save_tiny_preset(folder, image_size=IMAGE_SIZE):
    """A captioner preset far smaller than the shipped tiny one."""
    keras.utils.set_random_seed(0)
    preprocessor = keras_ov2.OpenVision2CaptionerPreprocessor(
        keras_ov2.OpenVision2Tokenizer(),
        keras_ov2.OpenVision2ImageConverter(image_size=(image_size, image_size)),
        sequence_length=64,
    )
    captioner = keras_ov2.OpenVision2Captioner(
        keras_ov2.OpenVision2Backbone(
            patch_size=14, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64
        ),
        keras_ov2.OpenVision2TextDecoder(30522, 32, 1, 2, 64),
        preprocessor=preprocessor,
    )
    captioner.save_to_preset(str(folder))


def fingerprint(batch):
    images, captions = batch
    digest = hashlib.sha1(np.ascontiguousarray(images).tobytes())
    digest.update("\n".join(map(str, captions)).encode())
    return digest.hexdigest()[:16]


class Fingerprinted(grain.IterDataset):
    """Passes batches through; `produced` lists the fingerprints of the
    latest iterator's batches, in order."""

    def __init__(self, parent):
        super().__init__(parent)
        self.skipped, self.produced = parent.skipped, []

    def __iter__(self):
        self.produced = []
        return FingerprintedIterator(self._parent.__iter__(), self.produced)


class FingerprintedIterator(grain.DatasetIterator):
    def __init__(self, parent, produced):
        super().__init__(parent)
        self.produced = produced

    def __next__(self):
        batch = next(self._parent)
        self.produced.append(fingerprint(batch))
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class StepLog(keras.callbacks.Callback):
    """Appends one JSON line per step to `path` (flushed: survives SIGKILL);
    `seconds` slows each step down so that a test can kill the run mid-way."""

    def __init__(self, path, datasets, seconds=0.0):
        super().__init__()
        self.path, self.datasets, self.seconds = path, datasets, seconds

    def on_train_begin(self, logs=None):
        self.first = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.total = 0.0

    def on_train_batch_end(self, batch, logs=None):
        total = float(logs["loss"]) * (batch + 1)
        loss, self.total = total - self.total, total
        optimizer = self.model.optimizer
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        size = self.model.preprocessor.image_converter.image_size[0]
        line = dict(image_size=size, step=step, loss=loss,
                    lr=float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                    batch=self.datasets[-1].produced[step - self.first - 1])
        with open(self.path, "a") as file:
            file.write(json.dumps(line) + "\n")
        time.sleep(self.seconds)


def run(preset, checkpoint_dir, output_dir, log, stages, seconds=0.0):
    """`pretrain` with the step log. Returns its result."""
    datasets = []
    make = setup.make_pretraining_dataset

    def fingerprinted(*args, **options):
        datasets.append(Fingerprinted(make(*args, **options)))
        return datasets[-1]

    setup.make_pretraining_dataset = fingerprinted
    try:
        log_steps = StepLog(log, datasets, seconds)
        return pretrain(preset=preset, stages=stages, output_dir=output_dir,
                        checkpoint_dir=checkpoint_dir, checkpoint_every=CHECKPOINT_EVERY,
                        callbacks=[log_steps], print_fn=lambda *a: print(*a, flush=True))
    finally:
        setup.make_pretraining_dataset = make


def read_log(path):
    with open(path) as file:
        return [json.loads(line) for line in file]


if __name__ == "__main__":
    preset, checkpoint_dir, output_dir, log, stages = sys.argv[1:6]
    seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    run(preset, checkpoint_dir, output_dir, log, parse_stages(stages), seconds)
