"""One host of a simulated multi-host `pretrain`, for tests/test_multi_host.py:
`python -m tests.multi_host_run PRESET CHECKPOINT_DIR OUTPUT_DIR MESH LAYOUT KILL_AFTER`.

The launcher sets what a TPU pod's hosts get (KERAS_DISTRIBUTION_JOB_ADDRESSES,
_NUM_PROCESSES, _PROCESS_ID; with them `setup_training` calls
`keras.distribution.initialize()`) and XLA_FLAGS for the devices of this host.
CPU processes exchange arrays through Gloo. KILL_AFTER > 0: the process
SIGKILLs itself after that step of the stage (after the step's checkpoint,
if any, has been started), as a preemption would.
"""

import os
import signal
import sys
import traceback

import jax
import keras

from keras_ov2.cli.pretrain import parse_stages
from keras_ov2.training import pretrain

STAGES = "56:8:8"  # 8 steps of a global batch of 8 at 56 px
CHECKPOINT_EVERY = 2


class KillAfter(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    preset, checkpoint_dir, output_dir, mesh, layout, kill_after = sys.argv[1:7]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    callbacks = [KillAfter(int(kill_after))] if int(kill_after) else []
    try:
        pretrain(preset=preset, stages=parse_stages(STAGES), output_dir=output_dir, mesh=mesh,
                 layout=layout, checkpoint_dir=checkpoint_dir,
                 checkpoint_every=CHECKPOINT_EVERY, callbacks=callbacks, keep_ratio=1.0,
                 report=False, log_every=1, print_fn=lambda *a: print(*a, flush=True))
    except BaseException:  # exit now: JAX's shutdown barrier would wait minutes for the peer
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
