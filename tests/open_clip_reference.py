"""The parity reference: open_clip's VisionTransformer, run in a subprocess.

`python -m tests.open_clip_reference DIR` (started by `parity_releases`)
reads DIR/request.json and, with PyTorch and open_clip only (torchvision,
which open_clip imports, crashes when TensorFlow was loaded first, so Keras
stays out of this process):

- for each entry of "releases": builds the tower the way open_clip builds it
  from an open_clip_config.json, with random weights and the fixed sin-cos
  table in `positional_embedding` (as the authors' exports have it), and
  writes an authors'-style release (config + weights), the tower's outputs
  on random images (reference.npz) and, when asked, the same weights as a
  JAX parameter tree in the documented layout (params.npz);
- for each entry of "exports", once the test process has saved them (marker
  file `exports_ready`): loads the folder keras_ov2 exported, strictly, and
  writes the tower's outputs on the images saved with it.

No network, no pretrained weights.
"""

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.numpy_reference import sincos_table


def start(folder, request):
    """Starts this module on `folder` in a fresh Python without Keras."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "request.json").write_text(json.dumps(request))
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.open_clip_reference", str(folder)], cwd=root, env=env
    )


def vision_config(width, layers, patch, heads, image_size, mlp_ratio=4.0):
    return {
        "image_size": image_size,
        "layers": layers,
        "width": width,
        "patch_size": patch,
        "head_width": width // heads,
        "mlp_ratio": mlp_ratio,
        "no_ln_pre": True,
        "pool_type": "avg",
        "final_ln_after_pool": True,
        "norm_kwargs": {"eps": 1e-6},
    }


def open_clip_config(embed_dim, vision):
    return {
        "model_cfg": {"embed_dim": embed_dim, "vision_cfg": vision},
        "preprocess_cfg": {
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear",
            "resize_mode": "squash",
        },
    }


# The parity configurations of issue 6. Ti/16 is exactly the architecture of
# preset openvision_vit_tiny_patch16_160 (embed 192), so it also serves as
# that preset's release, and the one also written as JAX parameters;
# So400m is written as .safetensors.
PARITY_RELEASES = {
    "ti16_160": {
        "embed_dim": 192, "vision_cfg": vision_config(192, 12, 16, 3, 160), "jax": True,
    },
    "b16_224": {"embed_dim": 512, "vision_cfg": vision_config(768, 12, 16, 12, 224)},
    "l14_224_depth2": {"embed_dim": 768, "vision_cfg": vision_config(1024, 2, 14, 16, 224)},
    "so400m14_384_depth2": {
        "embed_dim": 1152,
        "vision_cfg": vision_config(1152, 2, 14, 16, 384, mlp_ratio=3.7362),
        "safetensors": True,
    },
    "ti8_160_depth2": {"embed_dim": 192, "vision_cfg": vision_config(192, 2, 8, 3, 160)},
}


# Keras encoders given back to open_clip: (seed, projection_dim).
EXPORTS = {"export_with_head": (1, 16), "export_no_head": (2, None)}
EXPORT_IMAGE_SIZE = 48


def keras_encoder(seed, projection_dim=None):
    """A small Keras encoder with non-trivial weights everywhere."""
    from keras_ov2 import OpenVision2Backbone

    model = OpenVision2Backbone(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4,
                                intermediate_dim=64, projection_dim=projection_dim)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(scale=0.3, size=variable.shape))
    return model


@functools.cache
def converted_release(folder):
    """keras_ov2's conversion of a release folder and its outputs on the
    reference images, computed once per session."""
    from keras_ov2.convert import load_open_clip

    model = load_open_clip(folder)
    images = np.load(Path(folder) / "reference.npz")["images"]
    return model, model.predict(images, verbose=0)


def parity_releases(tmp_path_factory):
    """The session's reference folder (test modules share it): PARITY_RELEASES,
    and EXPORTS saved by keras_ov2 then run by open_clip. The subprocess
    writes the releases while this process saves the exports."""
    folder = tmp_path_factory.getbasetemp() / "open_clip_reference"
    if (folder / "done").exists():
        return folder
    process = start(folder, {"releases": PARITY_RELEASES, "exports": list(EXPORTS)})
    try:
        from keras_ov2.convert import save_open_clip

        size = EXPORT_IMAGE_SIZE
        images = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
        for name, (seed, projection_dim) in EXPORTS.items():
            save_open_clip(keras_encoder(seed, projection_dim), folder / name, image_size=size)
            np.save(folder / name / "images.npy", images)
        (folder / "exports_ready").write_text("")
        if process.wait(timeout=600):
            raise RuntimeError(f"the open_clip reference failed; see its output ({folder})")
    finally:
        if process.poll() is None:
            process.kill()
    (folder / "done").write_text("")
    return folder


# Releases as the authors publish them, for tests.local_hub to serve under
# their Hub ids: OpenVision (v1) as a whole CLIP (vision tower and a small
# text tower), OpenVision 2 vision-only, its config written with the fields
# of the authors' fork and no norm_kwargs (the fork builds its LayerNorms with
# eps 1e-6 anyway, so the reference tower is built that way).
FORK_ONLY_FIELDS = ("in_channels",)
SMALL_TEXT_CFG = {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2,
                  "layers": 1, "no_causal_mask": True, "pool_type": "last"}


def fork_vision_config(width, layers, patch, heads, image_size, pos_embed_type="learnable"):
    vision = vision_config(width, layers, patch, heads, image_size)
    del vision["norm_kwargs"]
    vision.update(pos_embed_type=pos_embed_type, output_tokens=True, patch_dropout=0.0,
                  ls_init_value=None, attentional_pool=False, in_channels=3)
    return vision


HUB_RELEASES = {
    # repo id: spec. TI16's Hub id is the shipped preset's source.
    "UCSC-VLAA/openvision-vit-tiny-patch16-160": {
        "form": "clip", "embed_dim": 192, "vision_cfg": vision_config(192, 12, 16, 3, 160),
        "weights": ("bin",),
    },
    "someone/openvision2-tiny-vision-only": {
        "form": "vision_only", "embed_dim": 48,
        "vision_cfg": fork_vision_config(48, 2, 8, 4, 32), "weights": ("bin", "safetensors"),
    },
    "someone/openvision2-tiny-vision-only-sincos": {
        "form": "vision_only", "embed_dim": 48, "prefix": "",
        "vision_cfg": fork_vision_config(48, 2, 8, 4, 32, "sin_cos_2d"),
        "weights": ("safetensors",),
    },
}


def hub_releases(tmp_path_factory):
    """The session's Hub folder (HUB_RELEASES under hub/<repo id>/) and the
    towers' outputs on random images (outputs/<owner>--<name>.npz)."""
    folder = tmp_path_factory.getbasetemp() / "open_clip_hub_reference"
    if not (folder / "done").exists():
        process = start(folder, {"hub_releases": HUB_RELEASES})
        if process.wait(timeout=600):
            raise RuntimeError(f"the open_clip reference failed; see its output ({folder})")
        (folder / "done").write_text("")
    return folder


def build_config(written):
    """What upstream open_clip needs to build the tower the fork builds from
    `written`: eps 1e-6, no fork-only fields."""
    vision = {k: v for k, v in written.items() if k not in FORK_ONLY_FIELDS}
    vision.setdefault("norm_kwargs", {"eps": 1e-6})
    return vision


def write_hub_release(folder, outputs_path, spec, seed):
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    written = {"embed_dim": spec["embed_dim"], "vision_cfg": spec["vision_cfg"]}
    built = {"model_cfg": {**written, "vision_cfg": build_config(spec["vision_cfg"])}}
    if spec["form"] == "clip":
        from open_clip.model import CLIP

        written["text_cfg"] = SMALL_TEXT_CFG
        model = CLIP(spec["embed_dim"], built["model_cfg"]["vision_cfg"], SMALL_TEXT_CFG).eval()
        tower = model.visual
        tower.output_tokens = True
        randomize(tower, seed)
        state = model.state_dict()
    else:
        tower = build_tower(built)
        randomize(tower, seed)
        prefix = spec.get("prefix", "visual.")
        state = {prefix + k: v for k, v in tower.state_dict().items()}
    config = {"model_cfg": written, "preprocess_cfg": open_clip_config(0, {})["preprocess_cfg"]}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in state.items()}
    if "bin" in spec["weights"]:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    if "safetensors" in spec["weights"]:
        from safetensors.torch import save_file

        save_file(state, str(folder / "open_clip_model.safetensors"))
    size = spec["vision_cfg"]["image_size"]
    images = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype("float32")
    outputs_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(outputs_path, **outputs(tower, images))


def build_tower(config):
    from open_clip.model import _build_vision_tower

    model_cfg = config["model_cfg"]
    tower = _build_vision_tower(model_cfg["embed_dim"], dict(model_cfg["vision_cfg"]))
    tower.output_tokens = True
    return tower.eval()


def randomize(tower, seed):
    """Non-zero biases and non-unit LayerNorm scales everywhere (open_clip
    starts them at 0 and 1), and the authors' sin-cos position table."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    grid = tower.grid_size
    width = tower.class_embedding.shape[0]
    table = np.concatenate([np.zeros((1, width)), sincos_table(*grid, width)])
    with torch.no_grad():
        tower.positional_embedding.copy_(torch.from_numpy(table.astype("float32")))
        for name, param in tower.named_parameters():
            if param.ndim == 1 and name != "class_embedding":
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def outputs(tower, images):
    import torch

    blocks = []  # what each residual block outputs, (B, 1 + N, D), CLS first
    hooks = [block.register_forward_hook(lambda module, args, out: blocks.append(out))
             for block in tower.transformer.resblocks]
    with torch.no_grad():
        projected, tokens = tower(torch.from_numpy(images.transpose(0, 3, 1, 2)))
        pooled = tower.ln_post(tokens.mean(1))
    for hook in hooks:
        hook.remove()
    return {
        "images": images,
        "sequence_output": tokens.numpy(),
        "pooled_output": pooled.numpy(),
        "projected_output": projected.numpy(),
        "penultimate_tokens": blocks[-2][:, 1:].numpy(),  # LLaVA's vision tower
    }


def jax_tree(state, prefix="img/"):
    """The documented Flax layout (reference §5.3), from open_clip names by
    the inverse of the authors' JAX -> open_clip mapping (§5.4)."""
    dim = state["class_embedding"].shape[0]
    tree = {
        "embedding/kernel": state["conv1.weight"].transpose(2, 3, 1, 0),
        "cls": state["class_embedding"].reshape(1, 1, dim),
        "encoder_norm/scale": state["ln_post.weight"],
        "encoder_norm/bias": state["ln_post.bias"],
        "head/kernel": state["proj"],
    }
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in state:
        s = f"transformer.resblocks.{i}."
        t = f"Transformer/encoderblock_{i}/"
        attention = t + "MultiHeadDotProductAttention_0/"
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * dim, (j + 1) * dim)
            tree[f"{attention}{name}/kernel"] = state[s + "attn.in_proj_weight"][rows].T
            tree[f"{attention}{name}/bias"] = state[s + "attn.in_proj_bias"][rows]
        tree[attention + "out/kernel"] = state[s + "attn.out_proj.weight"].T
        tree[attention + "out/bias"] = state[s + "attn.out_proj.bias"]
        for flax, torch_name in (("LayerNorm_0", "ln_1"), ("LayerNorm_1", "ln_2")):
            tree[f"{t}{flax}/scale"] = state[f"{s}{torch_name}.weight"]
            tree[f"{t}{flax}/bias"] = state[f"{s}{torch_name}.bias"]
        for flax, torch_name in (("Dense_0", "c_fc"), ("Dense_1", "c_proj")):
            tree[f"{t}MlpBlock_0/{flax}/kernel"] = state[f"{s}mlp.{torch_name}.weight"].T
            tree[f"{t}MlpBlock_0/{flax}/bias"] = state[f"{s}mlp.{torch_name}.bias"]
        i += 1
    return {prefix + k: np.ascontiguousarray(v) for k, v in tree.items()}


def write_release(folder, spec, seed):
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip_config(spec["embed_dim"], spec["vision_cfg"])
    tower = build_tower(config)
    randomize(tower, seed)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    if spec.get("safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    if spec.get("jax"):
        numpy_state = {k: v.numpy() for k, v in tower.state_dict().items()}
        np.savez(folder / "params.npz", **jax_tree(numpy_state))
    size = spec["vision_cfg"]["image_size"]
    images = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype("float32")
    np.savez(folder / "reference.npz", **outputs(tower, images))


def check_export(folder):
    """Loads a keras_ov2 export into open_clip strictly and runs it."""
    import torch

    config = json.loads((folder / "open_clip_config.json").read_text())
    tower = build_tower(config)
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    tower.load_state_dict({k.removeprefix("visual."): v for k, v in state.items()}, strict=True)
    images = np.load(folder / "images.npy")
    np.savez(folder / "reference.npz", **outputs(tower, images))


def main(folder):
    folder = Path(folder)
    request = json.loads((folder / "request.json").read_text())
    for seed, (name, spec) in enumerate(sorted(request.get("releases", {}).items())):
        write_release(folder / name, spec, seed)
    for seed, (repo, spec) in enumerate(sorted(request.get("hub_releases", {}).items())):
        outputs_path = folder / "outputs" / (repo.replace("/", "--") + ".npz")
        write_hub_release(folder / "hub" / repo, outputs_path, spec, seed)
    exports = request.get("exports", [])
    deadline = time.monotonic() + 600  # gives up if the test process died
    while exports and not (folder / "exports_ready").exists():
        if time.monotonic() > deadline:
            sys.exit("the test process never saved its exports")
        time.sleep(0.1)
    for name in exports:
        check_export(folder / name)


if __name__ == "__main__":
    main(sys.argv[1])
