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
4. the training curves, from the run's log;
5. the settings for a TPU pod slice with the Keras distribution API.

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
from keras_ov2.data.pipeline import make_pretraining_dataset
from keras_ov2.training.pretrain import Stage
from keras_ov2.training.pretrain import pretrain

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
else:
    stages = [Stage(84, steps=1500, batch_size=16),
              Stage(224, steps=150, batch_size=16, learning_rate=1e-4)]
log = pretrain(dataset=source, stages=stages, caption_field="caption", augment=False,
               output_dir="ov2_two_stage")

"""
What it printed:

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
keras_ov2 uses Keras' own distribution API (JAX backend). On a TPU pod slice,
run the same program on every host:

```python
import keras, keras_ov2
from keras_ov2.data import open_source
from keras_ov2.data.pipeline import make_pretraining_dataset
from keras_ov2.distribution import data_shard, make_distribution, per_host_batch_size

keras.distribution.initialize()  # every host: joins the JAX multi-host runtime
preset = "openvision2_captioner_vit_large_patch14_84"
# A v4-512 slice has 256 chips. The authors ran pure data parallelism on it;
# "fsdp" also splits every kernel and its Adam state over the "data" axis.
distribution = make_distribution({"data": 256, "model": 1}, mode="fsdp", model=preset)
with distribution.scope():  # build and train inside the scope
    captioner = keras_ov2.OpenVision2Captioner.from_preset(preset, load_weights=False)
    shard_index, shard_count = data_shard(distribution)   # this host's rows
    train = make_pretraining_dataset(
        open_source("/data/recap_shards/*.array_record"), image_size=84,
        batch_size=per_host_batch_size(32_768, distribution),  # this host's part
        caption_field="re_caption", shard_index=shard_index, shard_count=shard_count,
        num_workers=16,
    )
    captioner.start_stage(84, total_steps=390_981, learning_rate=1.024e-3,
                          warmup_steps=1_563)
    captioner.fit(train, steps_per_epoch=390_981, epochs=1)
```

- `keras.distribution.initialize()` first, on every host; then the mesh
  covers all chips of the slice.
- Modes: `"data"` (every weight replicated), `"fsdp"` (weights, gradients
  and optimizer state split over `"data"`; what fits an L/14 or larger with
  a big batch), `"tensor"` (Megatron-style over `"model"`, for encoders too
  wide for one chip). An axis that does not divide a dimension is an error
  naming the variable.
- Keras does not split a Grain dataset between hosts: `data_shard` and
  `per_host_batch_size` give each host its own rows and its part of the
  global batch.
- Memory switches: `from_preset(..., dtype="mixed_bfloat16")`, building the
  model inside `keras.RematScope(...)`, and
  `compile(gradient_accumulation_steps=N)`.
- The 224 px stage is a second program (or a second `start_stage` and
  `fit`) with its own batch size, learning rate and step count.

On a CPU you can try the layouts with simulated devices:
`XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax`.
"""
