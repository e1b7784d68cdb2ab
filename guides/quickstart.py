"""
Title: OpenVision 2 in Keras: quickstart
Author: keras_ov2 team
Date created: 2026/11/22
Last modified: 2026/11/22
Description: Load an encoder, extract features on JAX, TensorFlow and PyTorch, see the token masking on a photo, caption and classify zero-shot.
Accelerator: None
"""

"""
## Introduction

OpenVision 2 pretrains a ViT by captioning alone: the encoder turns an image
into patch tokens, about two thirds of them are dropped at random, and a small
text decoder predicts the image's caption from the rest. What you keep is the
encoder, a KerasHub backbone that runs on JAX, TensorFlow and PyTorch.

This guide:

1. lists the encoder presets and says what their weights need;
2. pretrains a demo-size captioner on the built-in synthetic scenes (a few
   minutes on a CPU), so that every later step uses weights that were really
   trained, with no download;
3. loads its encoder as a preset and extracts features;
4. checks that JAX, TensorFlow and PyTorch give the same features;
5. shows the token masking on a real photo;
6. captions images and classifies them zero-shot by scoring captions.

Everything runs offline. The tests of keras_ov2 run this guide with
`KERAS_OV2_GUIDE_SMALL=1`, which shrinks the training to a few steps: the
numbers printed then are those of an almost untrained model. Leave it unset.
"""

"""
## Setup

Keras reads the backend from `KERAS_BACKEND` when it is first imported; this
guide uses JAX unless you set another one.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess
import sys

import keras  # import Keras (and its backend) before anything imports TensorFlow
import matplotlib

matplotlib.use("Agg")
import matplotlib.cbook
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import keras_ov2
from keras_ov2.data import SyntheticScenes
from keras_ov2.training import DEFAULT_STAGES
from keras_ov2.training import Stage
from keras_ov2.training import pretrain
from keras_ov2.training import tidy

SMALL = os.environ.get("KERAS_OV2_GUIDE_SMALL") == "1"
print("Keras", keras.__version__, "on", keras.backend.backend(), "| small settings:", SMALL)

"""
## The presets

Every released OpenVision 2 and OpenVision encoder has a preset: its
architecture, shipped inside the package, and the name of the released
checkpoint it stands for (`source`).
"""

rows = [
    (name, m["params"] / 1e6, m["image_size"], m["source"] or "-")
    for name, m in keras_ov2.list_presets().items()
    if m["family"] == "openvision2"
]
print(f"{'preset':40} {'params':>8} {'px':>4}  source")
for name, params, size, source in rows:
    print(f"{name:40} {params:7.1f}M {size:>4}  {source}")

"""
The weights are the authors' released PyTorch checkpoints. The first
`from_preset(name)` downloads the release (with a progress bar), converts it
to a Keras preset without needing PyTorch, and caches it
(`$KERAS_OV2_CACHE`, default `~/.cache/keras_ov2`); later calls load the
cached copy, offline too. Here, the smallest released encoder (OpenVision
ViT-Ti/16 at 160 px; the release is a whole CLIP, of which keras_ov2 keeps
the 5.5M-parameter vision tower). Offline and not converted before, the
error says which files to fetch and the command that converts them:
"""

try:
    released = keras_ov2.OpenVision2Backbone.from_preset("openvision_vit_tiny_patch16_160")
    print(f"Loaded {released.count_params():,} parameters of trained weights.")
except OSError as error:  # no network, and no cached conversion
    print(error)

"""
The same works through KerasHub's base class,
`keras_hub.models.Backbone.from_preset("openvision2_vit_large_patch14_224")`,
and for any open_clip release of an OpenVision encoder by its Hub handle,
`from_preset("hf://UCSC-VLAA/openvision2-vit-large-patch14-224-vision-only")`.
`ov2 presets` lists every name with its source and whether its weights are
cached; the [released checkpoints guide](released_checkpoints.ipynb) does the
conversion step by step.

`from_preset(name, load_weights=False)` builds any architecture with random
weights. Here we train a model of our own instead.

## Pretrain a demo captioner

`keras_ov2.training.pretrain` runs the recipe behind `ov2 pretrain` on the
built-in `SyntheticScenes`: images of coloured shapes with detailed captions
such as "two shapes: a small red circle and a large blue square from left to
right. the red circle is left of and below the blue square." It trains the
captioner the scenes recommend, `openvision2_captioner_scenes_patch14_84`: a
demo-size encoder (128 wide, 4 blocks, patch 14) and 2-block decoder, with a
tokenizer of the 37 word-pieces the scenes' captions use (the authors' BERT
vocabulary, in `openvision2_captioner_tiny_patch14_84`, would make its
32,000-row output layer most of the step). The recipe: AdamW, warmup then
cosine, at 84 px, and OpenVision 2's token masking: the decoder sees a
random 35% of the encoder's patch tokens at every step.
It prints the held-out loss before and after; captions of held-out scenes,
generated from views of the tokens drawn as in training, and how often each
object's count, colour, shape and size come out right; and linear probes of
the encoder against a randomly initialised one.
"""

stages = [Stage(image_size=84, steps=24, batch_size=8)] if SMALL else DEFAULT_STAGES
log = pretrain(stages=stages, output_dir="ov2_tiny_captioner")

"""
The loss is the token-level cross-entropy times 2 (the authors' weight), so
an untrained model starts near 8.6: uniform guesses over the decoder's 37
vocabulary rows would give 2 x ln(37) = 7.2, and random weights do a little
worse. With the full 5,000 steps (about 7.5 minutes on 2 CPU cores) it ends
near 0.19: count, colour and size come out right for every object, shapes
for about 80% of them, and the encoder beats the random one on every probe
(see the README).

The run wrote a captioner preset: the encoder, the decoder, the tokenizer and
the image converter, plus `pretrain_log.json`.
"""

print(sorted(os.listdir("ov2_tiny_captioner")))
captioner = keras_ov2.OpenVision2Captioner.from_preset("ov2_tiny_captioner")

"""
## Extract features

The encoder alone is what LLaVA-style models and linear probes use. Save it
as its own preset and load it back the way you would load a released one.
"""

captioner.backbone.save_to_preset("ov2_tiny_encoder")
encoder = keras_ov2.OpenVision2Backbone.from_preset("ov2_tiny_encoder")
converter = keras_ov2.OpenVision2ImageConverter(image_size=(84, 84))

scenes = SyntheticScenes(8, image_size=84).held_out()
images = np.stack([scenes[i]["image"] for i in range(len(scenes))])  # uint8
features = encoder(converter(images))
for key, value in features.items():
    print(f"{key:16} {tuple(value.shape)}")

"""
- `sequence_output` (8, 36, 128): one token per 14 px patch (84 / 14 = 6, a
  6 x 6 grid), after the last block, without the CLS token and without a
  final LayerNorm. This is what the caption decoder reads.
- `pooled_output` (8, 128): a LayerNorm of the mean patch token, one vector
  per image.

The position embedding is a fixed 2-D sin-cos table recomputed for each grid,
so the same weights take other sizes: at 224 px the grid is 16 x 16.
"""

features_224 = encoder(keras_ov2.OpenVision2ImageConverter(image_size=(224, 224))(images))
print("224 px:", tuple(features_224["sequence_output"].shape))

"""
## The same features on JAX, TensorFlow and PyTorch

A Python process holds one Keras backend, so the two others run in
subprocesses on the saved preset and the same images, and write their
features to files.
"""

np.save("scene_images.npy", keras.ops.convert_to_numpy(converter(images)))
script = "encode_with_backend.py"
with open(script, "w") as f:
    f.write(
        "import sys\n"
        "import numpy as np\n"
        "import keras\n"
        "import keras_ov2\n"
        "encoder = keras_ov2.OpenVision2Backbone.from_preset('ov2_tiny_encoder')\n"
        "outputs = encoder.predict(np.load('scene_images.npy'), verbose=0)\n"
        "np.savez(f'features_{keras.backend.backend()}.npz', **outputs)\n"
    )
here = keras.backend.backend()
others = [b for b in ("jax", "tensorflow", "torch") if b != here]
runs = [
    subprocess.Popen([sys.executable, script],
                     env={**os.environ, "KERAS_BACKEND": b}, stderr=subprocess.PIPE)
    for b in others
]
for backend, run in zip(others, runs):
    if run.wait():
        raise RuntimeError(f"{backend} failed:\n{run.stderr.read().decode()[-3000:]}")

mine = {k: keras.ops.convert_to_numpy(v) for k, v in encoder(np.load("scene_images.npy")).items()}
print(f"{'backend':12} {'max |diff| tokens':>18} {'max |diff| pooled':>18}")
for backend in others:
    theirs = np.load(f"features_{backend}.npz")
    diffs = [np.abs(theirs[k] - mine[k]).max() for k in ("sequence_output", "pooled_output")]
    print(f"{backend:12} {diffs[0]:18.2e} {diffs[1]:18.2e}")

"""
The differences are float32 rounding (a few 1e-6 on a CPU): the three
backends run the same model. (On GPUs that compute float32 matmuls in TF32,
expect about 1e-3.)

## Token masking on a photo

In pretraining, the encoder sees the whole image; then
`VisualTokenMasking` keeps K = int(N x 0.35) of the N patch tokens, a fresh
random subset at every step, in random order, and only those reach the
decoder. Feature extraction always sees every token; `generate` and `score`
see every token by default, or views drawn as in training with
`view="masked"`. Here a masking layer with the authors' ratio runs on the
encoder's tokens of a 224 px photo.

The photo is matplotlib's sample image of Grace Hopper
(`matplotlib.cbook.get_sample_data("grace_hopper.jpg")`), a real photograph
that ships with matplotlib, so no download is needed.
"""

with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
    photo = np.asarray(Image.open(file).convert("RGB"))
photo = keras.ops.convert_to_numpy(
    keras_ov2.OpenVision2ImageConverter(image_size=(224, 224), normalize=False)(photo)
)
tokens = captioner.encode_images(photo[None])
masking = keras_ov2.layers.VisualTokenMasking(keep_ratio=0.35, seed=1)
kept = masking(tokens, training=True)
print("encoder tokens:", tuple(tokens.shape), "-> tokens the decoder sees:", tuple(kept.shape))

"""
Which patches were kept? Feed the masking layer the patch *indices* as if
they were tokens: it returns the indices it kept, in the order the decoder
sees them. Two calls are two training steps: two different subsets.
"""

patch = encoder.patch_size
grid = photo.shape[0] // patch
num_patches = grid * grid
indices = keras.ops.reshape(keras.ops.arange(num_patches, dtype="float32"), (1, num_patches, 1))
steps = [
    keras.ops.convert_to_numpy(masking(indices, training=True))[0, :, 0].astype(int)
    for _ in range(2)
]
print(f"{num_patches} patches, {len(steps[0])} kept per step; kept in both steps: "
      f"{len(set(steps[0]) & set(steps[1]))}")
print("step 1, first ten kept patches in decoder order:", steps[0][:10].tolist())

figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
axes[0].imshow(photo)
axes[0].set_title("input, 224 px (16 x 16 patches)")
for axis, kept_patches, step in zip(axes[1:], steps, (1, 2)):
    shown = photo.astype("float32") * 0.15 + 200 * 0.85  # dropped: washed out
    for order, index in enumerate(kept_patches):
        row, col = divmod(int(index), grid)
        box = np.s_[row * patch:(row + 1) * patch, col * patch:(col + 1) * patch]
        shown[box] = photo[box]
        axis.text(col * patch + patch / 2, row * patch + patch / 2, str(order),
                  fontsize=5, ha="center", va="center", color="yellow")
    axis.imshow(shown.astype("uint8"))
    axis.set_title(f"training step {step}: {len(kept_patches)} of {num_patches} kept")
for axis in axes:
    axis.axis("off")
figure.tight_layout()
figure.savefig("token_masking.png", dpi=110)
print("wrote token_masking.png")

"""
![token masking](token_masking.png)

Bright patches are kept, washed-out ones dropped; the numbers are the order in
which the decoder reads the kept tokens. The order is random, not raster: the
authors keep it so, and under the decoder's causal mask each visual token
attends only to the ones before it.

## Captions

`generate` decodes greedily with a KV cache. The decoder trained on random
35% subsets of the tokens, in random order, never on all of them in raster
order; `view="masked"` shows it each image as training did, in several
draws, and keeps the likeliest caption. Held-out scenes, never seen in
training:
"""

held_out = SyntheticScenes(8, image_size=84, seed=0).held_out()
scene_images = np.stack([held_out[i]["image"] for i in range(len(held_out))])
truths = [held_out[i]["caption"] for i in range(len(held_out))]
made = [tidy(c) for c in captioner.generate(scene_images, view="masked", draws=8, seed=0)]
for generated, truth in zip(made, truths):
    print(f"{'ok' if generated == truth else '  '} made: {generated}\n   true: {truth}")
photo_84 = keras_ov2.OpenVision2ImageConverter(image_size=(84, 84), normalize=False)(photo)
photo_caption = captioner.generate(keras.ops.convert_to_numpy(photo_84)[None], view="masked",
                                   draws=8, seed=0)
print("the photo:", tidy(photo_caption[0]))

"""
A model trained on coloured shapes describes everything as coloured shapes,
Grace Hopper included. A released OpenVision 2 encoder was trained on
hundreds of millions of captioned web images; its decoder is not released as
an open_clip file, which is why the captions here come from our own model.

## Zero-shot classification by caption scoring

`score(images, texts)` is the log-likelihood of each text given its image
(with `view="masked"`, averaged over views drawn as in training). To
classify, score every image against one caption per class and take the
best. Here the classes are the 24 colour-shape pairs, on held-out scenes of
one shape each, each class's caption written as the scenes' detailed
captions are (with the object's true size, which is not what is asked).
"""

colours, shapes = keras_ov2.data.COLOURS, keras_ov2.data.SHAPES
classes = [f"{colour} {shape}" for colour in colours for shape in shapes]
single = SyntheticScenes(12 if SMALL else 96, image_size=84, min_objects=1,
                         max_objects=1).held_out()
pictures = np.stack([single[i]["image"] for i in range(len(single))])
labels = [classes.index(single[i]["short_caption"]) for i in range(len(single))]
sizes = [keras_ov2.data.SIZES[single[i]["objects"]["size"][0]] for i in range(len(single))]
prompts = [f"one shape: a {size} {name}." for size in sizes for name in classes]

scores = captioner.score(
    np.repeat(pictures, len(classes), axis=0), prompts, batch_size=192, view="masked",
    draws=4, seed=0,
).reshape(len(pictures), len(classes))
predicted = scores.argmax(axis=1)
right = predicted == np.array(labels)
colour_right = [classes[p].split()[0] == classes[t].split()[0] for p, t in zip(predicted, labels)]
shape_right = [classes[p].split()[1] == classes[t].split()[1] for p, t in zip(predicted, labels)]
print(f"{'':14} {'accuracy':>9} {'chance':>7}")
print(f"{'colour+shape':14} {right.mean():9.0%} {1 / len(classes):7.0%}")
print(f"{'colour':14} {np.mean(colour_right):9.0%} {1 / len(colours):7.0%}")
print(f"{'shape':14} {np.mean(shape_right):9.0%} {1 / len(shapes):7.0%}")
for i in range(3):
    best = np.argsort(-scores[i])[:3]
    print(f"true {classes[labels[i]]!r}: best " +
          ", ".join(f"{classes[j]!r} ({scores[i, j]:.1f})" for j in best))

"""
Each score is a sum of log-probabilities over the caption's word-pieces and
its end token, so the captions of all classes should have similar lengths
(here they differ in two words only). Scoring reads the same knowledge out of the
decoder as generation does, without decoding, so expect the same strengths
as in the generated captions: colours before shapes. With small settings the
model has barely trained and the accuracies sit near chance.

## Where next

- [Released checkpoints](released_checkpoints.ipynb): convert the authors'
  open_clip checkpoints, check parity, use the encoder inside a LLaVA-style
  model, export back.
- [Pretraining](pretraining.ipynb): your own data as ArrayRecord shards, the
  Grain pipeline, the 84 -> 224 px recipe, a TPU pod slice.
"""
