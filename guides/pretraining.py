"""
Title: Pretraining OpenVision 2: data, pipeline, the 84 -> 224 px recipe, scaling out
Author: keras_ov2 team
Date created: 2026/11/22
Last modified: 2026/11/22
Description: Store image-caption data as ArrayRecord shards, read it with Grain, pretrain in two resolution stages, plot the curves, and set up a TPU pod slice.
Accelerator: GPU
"""

"""
## Introduction

OpenVision 2 is pretrained by captioning alone, in stages of increasing
resolution: most of the samples at 84 px, where a patch-14 encoder sees a
6 x 6 grid and training is cheap, then a short stage at 224 px (16 x 16). The
parameters carry over from stage to stage; the optimizer and the learning-rate
schedule restart. This guide walks through the pieces with the demo-size
captioner:

1. your own image-caption files -> checked ArrayRecord shards
   (`keras_ov2.data.build_array_record`, or `ov2 data build`);
2. the Grain pipeline that feeds `fit` (`make_pretraining_dataset`), with the
   authors' augmentations;
3. two stages, 84 px then 224 px, with `keras_ov2.training.pretrain`;
4. checkpoints, a simulated preemption, and the resumed run;
5. the training curves, from the run's log;
6. the settings for a TPU pod slice with the Keras distribution API, and the
   command that launches them on every host.

With the default settings it takes roughly ten minutes on two CPU cores (our
estimate from the step rates; much less on a GPU). The tests of keras_ov2 run it with `KERAS_OV2_GUIDE_SMALL=1`, a few
steps per stage; the curves are then short and the captions wrong.
"""

"""
## Setup
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import io
import json

import keras  # import Keras (and its backend) before anything imports TensorFlow
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from keras_ov2.data import JsonlFolderSource
from keras_ov2.data import SyntheticScenes
from keras_ov2.data import build_array_record
from keras_ov2.data import open_source
from keras_ov2.data import make_pretraining_dataset
from keras_ov2.training import Stage
from keras_ov2.training import pretrain

SMALL = os.environ.get("KERAS_OV2_GUIDE_SMALL") == "1"
print("Keras", keras.__version__, "on", keras.backend.backend(), "| small settings:", SMALL)

"""
## Your data as files

The simplest layout to make by hand is a folder of images with a
`captions.jsonl` index, one `{"image": ..., "caption": ...}` per line
(keras_ov2 also reads WebDataset tars as img2dataset writes them, Parquet,
and ArrayRecord). Here we write JPEG files of the built-in synthetic scenes,
224 px, with their short captions, and spoil two records on purpose: a
truncated JPEG and an empty caption. Web data always has some of both.
"""

num_records = 200 if SMALL else 2000
scenes = SyntheticScenes(num_records, image_size=224, seed=0)
os.makedirs("my_data", exist_ok=True)
with open("my_data/captions.jsonl", "w") as index:
    for i in range(num_records):
        scene = scenes[i]
        buffer = io.BytesIO()
        Image.fromarray(scene["image"]).save(buffer, format="JPEG", quality=95)
        data, caption = buffer.getvalue(), scene["short_caption"]
        if i == 3:
            data = data[: len(data) // 3]  # truncated download
        if i == 7:
            caption = "  "  # empty alt-text
        with open(f"my_data/{i:05d}.jpg", "wb") as f:
            f.write(data)
        index.write(json.dumps({"image": f"{i:05d}.jpg", "caption": caption}) + "\n")
print(open("my_data/captions.jsonl").readline().strip())

"""
## Checked ArrayRecord shards

`build_array_record` decodes every image and caption once, counts and leaves
out the records the pipeline could not use, and stores the rest as found (the
image bytes are not re-encoded) in ArrayRecord shards, the format Grain reads
fastest with random access. The same from a shell:

```bash
ov2 data build my_data/ shards/ --caption-field caption
```
"""

summary = build_array_record(
    JsonlFolderSource("my_data"), "shards", caption_fields="caption",
    records_per_shard=num_records // 4, verbose=0,
)
print(f"written {summary['records_written']} of {summary['records_read']}, "
      f"skipped {summary['skipped']}")
print("shards:", summary["shards"])

"""
The two spoiled records are gone, each counted under its reason
(`unreadable_image`, `empty_caption`); `shards/summary.json` keeps the
counts. `open_source` picks the reader from the path (a folder of shards, a
glob, a list):
"""

source = open_source("shards")
print(type(source).__name__, len(source), "records")

"""
## The Grain pipeline

`make_pretraining_dataset` shuffles globally with a seed, takes this host's
shard (one of `jax.process_count()`), repeats with a new order every epoch,
decodes and augments each record with its own seeded randomness, and batches
`(uint8 images, captions)`: the captioner's preprocessor tokenizes the
captions and the images stay uint8 until the device. The augmentation is the
authors': an Inception crop (40-100% of the area, aspect 3/4 to 4/3), SimCLR
colour jitter with p 0.8, grayscale with p 0.2, no flips.
"""

augmented = make_pretraining_dataset(source, image_size=84, batch_size=8,
                                     caption_field="caption", seed=0)
images, captions = next(iter(augmented))
print("batch:", images.shape, images.dtype, "| first caption:", captions[0])

figure, axes = plt.subplots(2, 4, figsize=(10, 5.6))
for axis, image, caption in zip(axes.flat, images, captions):
    axis.imshow(image)
    axis.set_title(caption, fontsize=7)
    axis.axis("off")
figure.suptitle("84 px training images with the authors' augmentation")
figure.tight_layout()
figure.savefig("augmented_batch.png", dpi=100)
print("wrote augmented_batch.png")

"""
![augmented batch](augmented_batch.png)

On web data the augmentation helps. On these scenes it would teach the model
falsehoods: a caption says "red circle and blue square", and colour jitter
turns red orange while a crop may cut the square out. So the run below turns
it off (`augment=False`), which only resizes.

## Two stages: 84 px, then 224 px

`pretrain` runs the stages one after the other on the same captioner:
`captioner.start_stage(size, total_steps, ...)` switches the preprocessor to
the new size and restarts AdamW and the warmup + cosine schedule, the weights
carry over, and the sin-cos position table follows the new grid, so there is
nothing to interpolate. Token masking keeps 35% of the patch tokens in both
stages: 12 of 36 tokens at 84 px, 89 of 256 at 224 px.

The authors' L/14 run: 12.8B samples at 84 px (batch 32,768, peak LR
1.0e-3), then 1.0B at 224 px (batch 16,384, peak LR 2.6e-5). We keep the
shape of that recipe (most steps at low resolution, a short high-resolution
stage at a lower learning rate) at demo scale.
"""

if SMALL:
    stages = [Stage(84, steps=16, batch_size=8), Stage(224, steps=4, batch_size=4)]
    checkpoint_every, preempt_at = 4, 10
else:
    stages = [Stage(84, steps=1500, batch_size=16),
              Stage(224, steps=150, batch_size=16, learning_rate=1e-4)]
    checkpoint_every, preempt_at = 250, 600

"""
A long run has to survive being stopped: preemptible TPU VMs are reclaimed
at any time, jobs hit time limits, hosts fail. With `checkpoint_dir`,
`pretrain` saves a checkpoint every `checkpoint_every` steps and at the end
of each stage, and when it is started again with the same arguments it
resumes from the latest one.

To see that happen, this first call gets a Keras callback that fails at
step `preempt_at` of the first stage, as a preempted VM would (a real
preemption kills the process; `tests/test_checkpoint.py` does that, with
SIGKILL). The callback also records each step's loss, to compare with the
resumed run below. Keras reports the running mean of the epoch's loss after
each batch, so a step's own loss is the difference of two running totals.
"""


class Preemption(Exception):
    pass


class StepLosses(keras.callbacks.Callback):
    """Records the loss of every step of every `fit`; raises `Preemption`
    after `fail_at` steps of the first one."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.fail_at, self.fits = fail_at, []

    def on_train_begin(self, logs=None):
        self.fits.append([])
        self.total = 0.0

    def on_train_batch_end(self, batch, logs=None):
        total = float(logs["loss"]) * (batch + 1)
        self.fits[-1].append(total - self.total)
        self.total = total
        if len(self.fits) == 1 and batch + 1 == self.fail_at:
            raise Preemption(f"preempted after step {batch + 1}")


first_try = StepLosses(fail_at=preempt_at)
try:
    pretrain(dataset=source, stages=stages, caption_field="caption", augment=False,
             output_dir="ov2_two_stage", checkpoint_dir="checkpoints",
             checkpoint_every=checkpoint_every, callbacks=[first_try])
except Preemption as error:
    print("The run stopped:", error)

"""
## What a checkpoint holds

Checkpoints are written by Orbax (`orbax.checkpoint.CheckpointManager`, the
engine of big_vision-style JAX training and of Keras' `OrbaxCheckpoint`):
each is a folder named by its global step, the last three are kept
(`keep_checkpoints`). Saves are asynchronous: training waits only while the
arrays are copied off the devices, and Orbax writes them in a background
thread. A save is written into a temporary folder that becomes the step's
folder only once complete, so a crash while saving leaves the previous
checkpoint intact (and the temporary folder is deleted on the next start).
"""

from keras_ov2.training.checkpoint import CheckpointFolder

folder = CheckpointFolder("checkpoints")
for step in folder.steps():
    path = str(folder.path(step))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    items = sorted(os.listdir(path))
    print(f"{step:>3}  {size / 2**20:5.1f} MiB  {items}")
state = folder.saved_state(folder.latest())
print({key: state[key] for key in ("step", "stage", "stage_step", "processes")})
print("run:", {key: state["run"][key] for key in ("seed", "caption_field", "sequence_length")})

"""
- `model/`: every variable of the captioner, in order, and the state of the
  token masking's random generator, so that the resumed run drops the same
  tokens the uninterrupted run would have dropped. Each host writes only the
  shards it holds (tensorstore);
- `optimizer/`: AdamW's step counter and moments (twice the weights: the
  biggest item), so the learning-rate schedule goes on from the saved step;
- `data/`: the Grain iterator's position, written by Grain's own Orbax
  handler, one `process_<i>-of-<n>.json` per host, so the resumed run reads
  the batches the uninterrupted run would have read;
- `state/`: the stage and step, the loss history, the path and shape of
  every variable, and the run's recipe (stages, seed, caption field, ...)
  and model config: resuming with other settings, or another preset, is
  refused with an error naming what differs.

Arrays and JSON only: nothing is unpickled.

## Resume

Start the same call again, without the failing callback. The stage-1 steps
after the last checkpoint are trained again, from the saved state:
"""

resumed = StepLosses()
log = pretrain(dataset=source, stages=stages, caption_field="caption", augment=False,
               output_dir="ov2_two_stage", checkpoint_dir="checkpoints",
               checkpoint_every=checkpoint_every, callbacks=[resumed])

"""
It printed "Resumed from checkpoints/...", and its stage 1 started at
the step after the checkpoint. The steps between that checkpoint and the
preemption ran twice, once in each call; if the resume restored the right
weights, optimizer state, batches and masks, they computed the same losses:
"""

saved_step = state["stage_step"]
before = np.array(first_try.fits[0][saved_step:])  # steps saved_step + 1 ... preempt_at
after = np.array(resumed.fits[0][: len(before)])
print(f"{'step':>5} {'before the preemption':>22} {'after the resume':>17}")
for offset in sorted({0, 1, len(before) - 2, len(before) - 1}):
    print(f"{saved_step + offset + 1:>5} {before[offset]:22.4f} {after[offset]:17.4f}")
print(f"steps {saved_step + 1}-{preempt_at} trained twice, largest loss difference: "
      f"{np.abs(before - after).max():.1e}")

"""
The same losses (to float32 rounding of Keras' running mean): the resumed run
is the run that was never stopped. Started once more, `pretrain` would find
the end-of-run checkpoint, print "trained before the checkpoint" for each
stage and only evaluate and save the captioner. From a shell:

```bash
ov2 pretrain --data shards/ --caption-field caption --no-augment \
    --stages 84:1500:16,224:150:16:1e-4 \
    --checkpoint-dir checkpoints --checkpoint-every 250 --output ov2_two_stage
# killed? run the same line again: it resumes from checkpoints/
```

What the run printed:

- the held-out loss before training (about 21: an untrained model spreads
  its probability over all 32,000 vocabulary rows, 2 x ln(32,000) = 20.7 with
  the authors' loss weight of 2);
- per stage, a line every 1/12 of the steps: the mean loss since the last
  line, images per second, the learning rate (warmup, then cosine to 0). The
  first step of each stage includes compiling the train step for the new
  image size;
- the held-out loss after, and captions of held-out images beside the true
  ones. For a source other than the built-in scenes, "held-out" means its
  first records, which training also saw.

The folder `ov2_two_stage` is a captioner preset (load it with
`keras_ov2.OpenVision2Captioner.from_preset("ov2_two_stage")`) with the log
in `pretrain_log.json`.

## Training curves
"""

with open("ov2_two_stage/pretrain_log.json") as f:
    log = json.load(f)
losses = np.array(log["losses"])  # rows: (stage, step, mean loss since the last row)
figure, axis = plt.subplots(figsize=(7, 4))
offset = 0
for index, stage in enumerate(stages):
    rows = losses[losses[:, 0] == index]
    axis.plot(offset + rows[:, 1], rows[:, 2], marker=".",
              label=f"stage {index + 1}: {stage.image_size} px, batch {stage.batch_size}")
    offset += stage.steps
for boundary in np.cumsum([s.steps for s in stages])[:-1]:
    axis.axvline(boundary + 0.5, color="grey", linewidth=0.8)
axis.axhline(log["loss_before"], color="grey", linestyle=":", label="held-out, before")
axis.axhline(log["loss_after"], color="black", linestyle="--", label="held-out, after")
axis.set_xlabel("step")
axis.set_ylabel("caption loss (x2 weight)")
axis.set_yscale("log")
axis.legend()
figure.tight_layout()
figure.savefig("training_curves.png", dpi=100)
print("wrote training_curves.png")
print(f"{'stage':>5} {'px':>4} {'first loss':>11} {'last loss':>10}")
for index, stage in enumerate(stages):
    rows = losses[losses[:, 0] == index]
    print(f"{index + 1:>5} {stage.image_size:>4} {rows[0, 2]:11.3f} {rows[-1, 2]:10.3f}")
print(f"held-out loss {log['loss_before']:.3f} -> {log['loss_after']:.3f}; "
      f"exact captions {log['exact_match']:.0%}, words in place {log['words_in_place']:.0%}")

"""
![training curves](training_curves.png)

Most of the learning happens at 84 px, where a step is cheap. At the switch
to 224 px the encoder sees 256 patches where it saw 36, at new positions of
the same sin-cos table, and the learning rate warms up again: watch the first
points of the second stage for a bump. The point of the recipe is that the
expensive resolution is needed only for a short stage at the end.

## On a TPU pod slice

Nothing above changes for a large run except the sizes and the distribution.
keras_ov2 uses Keras' own distribution API (JAX backend), and `pretrain`
takes it as two arguments: `mesh` (the device mesh, a `"data"` axis and an
optional `"model"` axis) and `layout` (how the model is split over it).
Behind them, `keras_ov2.training.setup_training` does the setup you would
otherwise write by hand:

```python
from keras_ov2.data import open_source
from keras_ov2.training import setup_training

# A v4-512 slice: 256 chips on 64 hosts. The authors ran pure data parallelism
# on it; "fsdp" also splits every kernel and its Adam state over the "data" axis.
setup = setup_training("openvision2_captioner_vit_large_patch14_84",
                       mesh={"data": 256}, layout="fsdp")
with setup.scope():  # train inside the distribution
    captioner = setup.captioner  # built in the scope: its variables are laid out
    train = setup.dataset(  # this host's rows, this host's part of the global batch
        open_source("/data/recap_shards/*.array_record"), image_size=84,
        global_batch_size=32_768, caption_field="re_caption", num_workers=16,
    )
    captioner.start_stage(84, total_steps=390_981, learning_rate=1.024e-3,
                          warmup_steps=1_563)
    captioner.fit(train, steps_per_epoch=390_981, epochs=1)
```

`setup_training(preset, mesh=..., layout=...)`:

- calls `keras.distribution.initialize()` first when the launcher set
  `KERAS_DISTRIBUTION_JOB_ADDRESSES` or `KERAS_DISTRIBUTION_NUM_PROCESSES`
  (or with `initialize=True`): every host joins one JAX runtime, and the
  mesh then covers all chips of the slice. On a Cloud TPU VM, JAX finds the
  coordinator's address and each host's index itself;
- makes the distribution (`keras_ov2.distribution.make_distribution`) and
  builds the captioner inside its scope: Keras lays a variable out when it
  creates it;
- gives each host its own shard of the records (`setup.dataset`): Keras does
  not split a Grain dataset between hosts, so each host reads its own rows
  and its part of the global batch.

Layouts: `"data"` (every weight replicated), `"fsdp"` (weights, gradients
and optimizer state split over `"data"`; what fits an L/14 or larger with a
big batch), `"tensor"` (Megatron-style over `"model"`, for encoders too wide
for one chip). An axis that does not divide a dimension is an error naming
the variable.

`pretrain(..., mesh=..., layout=..., checkpoint_dir=...)` and `ov2 pretrain
--mesh ... --layout ...` use the same setup, stage after stage, with the
checkpoints above. Every host writes its own shards of the arrays and its
own Grain position, so `--checkpoint-dir` must be a place all hosts see: a
`gs://` bucket (Orbax writes there through tensorstore; no mount needed) or
a shared file system. The data shards are read through the local file
system: mount the bucket on every host with gcsfuse (as below) or copy
them to each host's disk (`gcloud storage cp -r gs://... /data/`). A run
may resume on another mesh or layout (Orbax reads each array into the new
shardings), or on another number of hosts (the hosts' data positions are
re-split; exact for the built-in pipeline without Grain workers).

The launch: the same command on every host of the slice, with
`gcloud compute tpus tpu-vm ssh --worker=all`:

```bash
TPU=ov2-v4-512 ZONE=us-central2-b
# once: install keras_ov2 and JAX for TPUs on every host
gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command='
  pip install -q "jax[tpu]" git+https://github.com/keras-ov2/keras_ov2.git'
# once per host start: the data bucket as a folder (read-only)
gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command='
  mkdir -p /data && gcsfuse --implicit-dirs -o ro my-bucket-data /data'
# the run: KERAS_DISTRIBUTION_NUM_PROCESSES (64 hosts) makes setup_training
# call keras.distribution.initialize()
gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command='
  export KERAS_BACKEND=jax KERAS_DISTRIBUTION_NUM_PROCESSES=64
  ov2 pretrain --preset openvision2_captioner_vit_large_patch14_84 \
      --data /data/recap_shards --caption-field re_caption --workers 16 \
      --stages 84:390981:32768:1.024e-3:1563 --mesh data=256 --layout fsdp \
      --checkpoint-dir gs://my-bucket/ov2_l14/ckpt --checkpoint-every 1000 \
      --output runs/ov2_l14'  # each host saves the final preset on its own disk
```

A preempted slice is recreated and the same commands are run again: the
run resumes from the latest checkpoint in `gs://my-bucket/ov2_l14/ckpt`. The
224 px stage is a second `--stages` entry (`224:61035:16384:2.6e-5` for the
authors' 1B samples) or a second run from the saved preset.

What keras_ov2's tests check: the layouts on 8 simulated devices of one
host (the same loss and updated weights as one device), and a checkpoint
saved under one layout and resumed under another. Several hosts are
untested; the code follows Keras' multi-host path.

- Memory switches: `from_preset(..., dtype="mixed_bfloat16")`, building the
  model inside `keras.RematScope(...)`, and
  `compile(gradient_accumulation_steps=N)`.

On a CPU you can try the layouts with simulated devices:
`XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax`.
"""
