"""
Title: Released OpenVision checkpoints: convert, check, use in a LLaVA-style model, export
Author: keras_ov2 team
Date created: 2026/11/22
Last modified: 2026/11/22
Description: Turn an open_clip release into a Keras preset, check it against open_clip, take LLaVA's penultimate-layer tokens, and export back.
Accelerator: None
"""

"""
## Introduction

The authors released their OpenVision and OpenVision 2 encoders as PyTorch
open_clip checkpoints on the Hugging Face Hub: a folder with
`open_clip_config.json` and `open_clip_pytorch_model.bin`. This guide:

1. makes such a release (with random weights, since this guide runs without
   a network) with open_clip itself;
2. converts it to a keras_ov2 preset;
3. checks that Keras and open_clip give the same tokens;
4. takes the tokens a LLaVA-style model needs (penultimate layer, patch
   tokens, at the checkpoint's resolution) and adds a projector;
5. exports the Keras encoder back to open_clip.

With a network, steps 1 and 2 are one call (see below). open_clip runs in
subprocesses: a process that has imported TensorFlow (which keras_ov2's data
tools load) can crash when torchvision, which open_clip imports, loads after
it. The tests of keras_ov2 run this guide with `KERAS_OV2_GUIDE_SMALL=1`,
which uses a 2-block encoder instead of the full 24-block one.
"""

"""
## Setup
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import subprocess
import sys

import keras  # import Keras (and its backend) before anything imports TensorFlow
import matplotlib.cbook
import numpy as np
from PIL import Image

import keras_ov2
from keras_ov2 import convert

SMALL = os.environ.get("KERAS_OV2_GUIDE_SMALL") == "1"
PRESET = "openvision2_vit_large_patch14_224"
print("Keras", keras.__version__, "on", keras.backend.backend(), "| small settings:", SMALL)

"""
## With a network

For a real release, this is all it takes. The first call downloads the files
with `huggingface_hub` (progress bar included), converts them without PyTorch
and caches the preset (`$KERAS_OV2_CACHE`, default `~/.cache/keras_ov2`,
recording the Hub revision and the keras_ov2 version); later calls load the
cached copy, offline too:

```python
encoder = keras_ov2.OpenVision2Backbone.from_preset(PRESET)
encoder = keras_ov2.OpenVision2Backbone.from_preset(     # the same, by Hub handle
    "hf://UCSC-VLAA/openvision2-vit-large-patch14-224-vision-only"
)
encoder = keras_hub.models.Backbone.from_preset(PRESET)  # the same, through KerasHub
```

From a shell, with files you downloaded yourself:

```bash
ov2 convert FOLDER --preset openvision2_vit_large_patch14_224           # into the cache
ov2 convert FOLDER converted/ --preset openvision2_vit_large_patch14_224 # into a folder
ov2 convert openvision2_vit_large_patch14_224 --refresh                  # download again
ov2 presets                                     # every name, its source, cached or not
```

A converted folder is an ordinary KerasHub preset (config, weights,
metadata). Share it with KerasHub's own upload; whoever loads it gets the
Keras weights as they are, with no conversion and no PyTorch:

```python
keras_hub.upload_preset("hf://my-org/openvision2-vit-large-patch14-224-keras", "converted/")
encoder = keras_ov2.OpenVision2Backbone.from_preset(
    "hf://my-org/openvision2-vit-large-patch14-224-keras"
)
```

Each released preset names its checkpoint:
"""

print(PRESET, "->", keras_ov2.list_presets()[PRESET]["source"])

"""
## Make an open_clip release

The open_clip side lives in a small script that never imports Keras. `make`
builds the vision tower exactly as open_clip builds it from an
`open_clip_config.json`, fills it with random weights (non-zero biases too, so
that a mix-up would show), puts the fixed 2-D sin-cos table in its
`positional_embedding` as the authors' exports do, and saves the release.
`run` loads a release folder strictly and writes the tower's outputs on
images.
"""

OPEN_CLIP_SIDE = r'''
"""open_clip side of the guide: `make FOLDER` or `run FOLDER IMAGES OUT`."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from open_clip.model import _build_vision_tower  # how open_clip builds `visual`


def tower_from(config):
    model_cfg = config["model_cfg"]
    tower = _build_vision_tower(model_cfg["embed_dim"], dict(model_cfg["vision_cfg"]))
    tower.output_tokens = True
    return tower.eval()


def make(folder):
    folder = Path(folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    tower = tower_from(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in tower.named_parameters():
            if name == "positional_embedding":
                param.copy_(torch.from_numpy(np.load(folder / "position_table.npy")))
            elif param.ndim == 1 and name != "class_embedding":
                param.add_(0.1 * torch.randn(param.shape))
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "position_table.npy").unlink()


def run(folder, images, out):
    folder = Path(folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    tower = tower_from(config)
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    tower.load_state_dict({k.removeprefix("visual."): v for k, v in state.items()},
                          strict=True)
    x = torch.from_numpy(np.load(images).transpose(0, 3, 1, 2))  # NHWC -> NCHW
    with torch.no_grad():
        _, tokens = tower(x)
        pooled = tower.ln_post(tokens.mean(1))
    np.savez(out, sequence_output=tokens.numpy(), pooled_output=pooled.numpy())


if __name__ == "__main__":
    {"make": make, "run": run}[sys.argv[1]](*sys.argv[2:])
'''
with open("open_clip_side.py", "w") as f:
    f.write(OPEN_CLIP_SIDE)


def open_clip_side(*args):
    """Runs open_clip_side.py in a fresh Python (no Keras, no TensorFlow)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    run = subprocess.run([sys.executable, "open_clip_side.py", *args], env=env,
                         capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"open_clip_side.py {' '.join(args)} failed:\n{run.stderr[-3000:]}")


"""
The configuration is the one the OpenVision 2 L/14 releases use: a ViT
without LayerNorm before the blocks, average pooling with the LayerNorm after
it, LayerNorm eps 1e-6, ImageNet mean and std. Like every open_clip tower it
carries a projection `proj` (to `embed_dim`), which OpenVision 2 does not
train. (Small settings: 2 blocks instead of 24.)
"""

release = "release"
os.makedirs(release, exist_ok=True)
width, layers, patch, size = 1024, 2 if SMALL else 24, 14, 224
vision_cfg = {
    "image_size": size, "layers": layers, "width": width, "patch_size": patch,
    "head_width": 64, "mlp_ratio": 4.0, "no_ln_pre": True, "pool_type": "avg",
    "final_ln_after_pool": True, "norm_kwargs": {"eps": 1e-6},
}
open_clip_config = {
    "model_cfg": {"embed_dim": 768, "vision_cfg": vision_cfg},
    "preprocess_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "interpolation": "bilinear", "resize_mode": "squash"},
}
with open(f"{release}/open_clip_config.json", "w") as f:
    json.dump(open_clip_config, f, indent=2)
grid = size // patch
table = keras.ops.convert_to_numpy(keras_ov2.layers.sincos_2d_table(grid, grid, width))
table = np.concatenate([np.zeros((1, width)), table]).astype("float32")  # CLS row: 0
np.save(f"{release}/position_table.npy", table)
open_clip_side("make", release)
print(sorted(os.listdir(release)))

"""
## Convert it

`convert.convert_to_preset` is what `ov2 convert` runs. It reads the
architecture from the config (refusing a config of another network, and
naming the field), checks every key and shape before assigning anything, and
checks that `positional_embedding` is the fixed sin-cos table the encoder
computes itself. With `preset=`, it also checks that the weights are those
of that preset's architecture, and copies the preset's metadata; an
OpenVision 2 preset drops the unused `proj`. (The 2-block small setting is
not the preset's architecture, so it converts without `preset=` and drops
`proj` with `projection=False`.)

Weights saved as `open_clip_model.safetensors` are read the same way; `.bin`
files are opened with `torch.load(weights_only=True)`, so a pickle that would
run code is refused.
"""

converted = convert.convert_to_preset(
    release, "converted", preset=None if SMALL else PRESET, projection=False
)
encoder = keras_ov2.OpenVision2Backbone.from_preset(converted)
metadata = json.load(open(f"{converted}/metadata.json"))
for field in ("description", "params", "image_size", "patch_size", "source", "converted_by"):
    print(f"{field:13} {metadata.get(field)}")
print("outputs:", sorted(encoder.output))

"""
## Check parity with open_clip

Both sides get the same normalised images, NHWC for Keras and NCHW for
PyTorch: Grace Hopper's photo from matplotlib's sample data (no download) and
a noise image.
"""

with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
    photo = np.asarray(Image.open(file).convert("RGB"))
converter = keras_ov2.OpenVision2ImageConverter(image_size=(size, size))
noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype="uint8")
images = keras.ops.convert_to_numpy(converter(np.stack([
    keras.ops.convert_to_numpy(keras_ov2.OpenVision2ImageConverter(
        image_size=(size, size), normalize=False)(photo)),
    noise,
])))
np.save("images.npy", images)
open_clip_side("run", release, "images.npy", "open_clip_outputs.npz")

reference = np.load("open_clip_outputs.npz")
ours = {k: keras.ops.convert_to_numpy(v) for k, v in encoder(images).items()}
print(f"{'output':16} {'shape':>16} {'max |keras - open_clip|':>24}")
for key in ("sequence_output", "pooled_output"):
    error = np.abs(ours[key] - reference[key]).max()
    print(f"{key:16} {str(ours[key].shape):>16} {error:24.2e}")

"""
Differences of order 1e-6 to 1e-5 are float32 rounding: the converted
encoder computes what open_clip computes. keras_ov2's tests check this for
Ti/16, B/16, L/14, So400m/14 and Ti/8 towers on all three Keras backends.

## A LLaVA-style vision tower

LLaVA-1.5 does not use a CLIP encoder's last output: it takes the hidden
states of the **penultimate** block (`mm_vision_select_layer = -2`), drops the
CLS token (`mm_vision_select_feature = "patch"`), and feeds them, at the
encoder's own resolution (336 px for CLIP L/14-336: 24 x 24 = 576 tokens),
through a two-layer GELU MLP into the language model's embedding space.
Which layer the OpenVision authors used in their LLaVA runs is not published;
the penultimate one is LLaVA's default and what this section shows.

`OpenVision2Backbone.intermediate_tokens(images, layers=-2)` gives the
patch tokens after any block (negative indices count from the end;
`include_class_token=True` keeps CLS first). It runs the encoder's own
layers, only as deep as asked:
"""

penultimate = encoder.intermediate_tokens(images, layers=-2)
print("penultimate patch tokens:", tuple(penultimate.shape))

"""
On the last block it gives exactly `sequence_output` (the encoder has no
final norm on its tokens):
"""

last = keras.ops.convert_to_numpy(encoder.intermediate_tokens(images, layers=-1))
print("last block == sequence_output:", np.array_equal(last, ours["sequence_output"]))

"""
Resolution: feed the size the checkpoint was trained at (224 px here,
16 x 16 = 256 tokens; the `openvision2_vit_large_patch14_336` release gives
24 x 24 = 576 tokens, like LLaVA-1.5's CLIP). The sin-cos positions let the
same weights run at other sizes, but the released encoders were fine-tuned
at theirs.

Now the LLaVA-1.5 projector ("mlp2x_gelu": Linear, GELU, Linear) into a
language model's width (4096 for a 7B LLaMA; smaller with small settings),
with the encoder frozen as in LLaVA's first stage. `intermediate_tokens`
also takes a symbolic `keras.Input`, so the tower is part of one functional
model that shares the encoder's weights:
"""

llm_width = 256 if SMALL else 4096
encoder.trainable = False
images_in = keras.Input((size, size, 3), name="images")
visual_tokens = encoder.intermediate_tokens(images_in, layers=-2)
x = keras.layers.Dense(llm_width, activation="gelu", name="projector_in")(visual_tokens)
visual_embeddings = keras.layers.Dense(llm_width, name="projector_out")(x)
llava_vision = keras.Model(images_in, visual_embeddings, name="llava_vision")
embeddings = llava_vision(images)
trainable = sum(int(np.prod(w.shape)) for w in llava_vision.trainable_weights)
frozen = sum(int(np.prod(w.shape)) for w in llava_vision.non_trainable_weights)
print(f"visual embeddings for the language model: {tuple(embeddings.shape)}")
print(f"parameters: {trainable / 1e6:.1f}M trainable (projector), "
      f"{frozen / 1e6:.1f}M frozen (encoder up to its penultimate block)")

"""
The language model then reads these 256 embeddings in place of the image
placeholder in its prompt; that part is the LLM's, not keras_ov2's.

## Export back to open_clip

`convert.save_open_clip` (or `ov2 convert converted exported --to open_clip
--image-size 224`) writes an open_clip release. An encoder without a head
gets the identity as `proj` (open_clip's tower always has one), which
converts back to no head. The export loads strictly into open_clip:
"""

exported = convert.save_open_clip(encoder, "exported", image_size=size)
print("wrote", exported)
open_clip_side("run", "exported", "images.npy", "exported_outputs.npz")
again = np.load("exported_outputs.npz")
for key in ("sequence_output", "pooled_output"):
    print(f"open_clip on the export, {key}: max |diff| "
          f"{np.abs(again[key] - ours[key]).max():.2e}")

round_trip = convert.load_open_clip("exported")
same = all(
    np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    for a, b in zip(round_trip.weights, encoder.weights)
)
print("Keras -> open_clip -> Keras, weights identical:", same)

"""
Keras to open_clip and back is exact: the files hold the same float32
numbers, only renamed and transposed.
"""
