"""Peak memory of converting a released checkpoint, against the checkpoint's size.

Writes a synthetic OpenVision 2 ViT-L/14 @224 release in the authors' form
(vision tower only, config without `norm_kwargs`, a `proj` key), as
open_clip_pytorch_model.bin (float32 and bfloat16) and as
open_clip_model.safetensors, then converts each into the preset
`openvision2_vit_large_patch14_224` in a fresh process and prints:

- extra_MB: how far the resident set rose during the conversion (VmHWM after
  it minus VmRSS before it; Keras, JAX and keras_ov2 already imported), the
  Keras model it builds included;
- ratio: extra_MB / the weights file's size (target <= 2.5, so that g/14,
  1B parameters, converts on an ordinary host), and extra_MB / the float32
  weights the model holds (the same for a float32 file; a bfloat16 file is
  half as big as what it converts to);
- seconds, and the reader: keras_ov2's own (no torch; tensors read one at a
  time) beside `torch.load(weights_only=True)` + a dict of NumPy arrays
  (how conversion read `.bin` files before), for scale.

    python benchmarks/convert_memory.py            # about 3 minutes on 2 cores
    python benchmarks/convert_memory.py --depth 4  # a quick run (L/14 width, 4 blocks)
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from step_measure import machine
from step_measure import print_result
from step_measure import proc_status_kb
from step_measure import reset_peak_rss
from step_measure import run_in_subprocess

PRESET = "openvision2_vit_large_patch14_224"
RUNS = {  # label: (weights file, reader)
    ".bin float32, keras_ov2 reader": ("float32/open_clip_pytorch_model.bin", "keras_ov2"),
    ".bin float32, torch.load (before)": ("float32/open_clip_pytorch_model.bin", "torch"),
    ".safetensors float32": ("safetensors/open_clip_model.safetensors", "keras_ov2"),
    ".bin bfloat16": ("bfloat16/open_clip_pytorch_model.bin", "keras_ov2"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=24, help="transformer blocks (24: L/14)")
    parser.add_argument("--worker", nargs=3, metavar=("FOLDER", "WEIGHTS", "READER"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def authors_config(depth):
    """The open_clip_config.json of an OV2 vision-only release, as the
    authors' fork writes it (reference §5.2.1): no norm_kwargs."""
    return {"model_cfg": {"embed_dim": 1024, "vision_cfg": {
        "image_size": 224, "layers": depth, "width": 1024, "head_width": 64,
        "patch_size": 14, "mlp_ratio": 4.0, "no_ln_pre": True, "pool_type": "avg",
        "final_ln_after_pool": True, "pos_embed_type": "sin_cos_2d", "output_tokens": True,
    }}, "preprocess_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


def write_release(root, depth):
    """The same random weights in the three forms (torch writes the .bin)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from keras_ov2 import OpenVision2Backbone
    from keras_ov2.convert import to_open_clip

    backbone = OpenVision2Backbone(patch_size=14, hidden_dim=1024, num_layers=depth,
                                   num_heads=16, intermediate_dim=4096)
    state, _ = to_open_clip(backbone, image_size=224)
    del backbone
    state = {k.removeprefix("visual."): torch.from_numpy(np.ascontiguousarray(v))
             for k, v in state.items()}
    state["proj"] = torch.randn(1024, 1024) * 0.03  # the fork always has one
    config = json.dumps(authors_config(depth))
    for form in ("float32", "bfloat16", "safetensors"):
        (root / form).mkdir(parents=True)
        (root / form / "open_clip_config.json").write_text(config)
    torch.save(state, root / "float32" / "open_clip_pytorch_model.bin")
    save_file(state, str(root / "safetensors" / "open_clip_model.safetensors"))
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    torch.save(state, root / "bfloat16" / "open_clip_pytorch_model.bin")


def convert_with_torch_load(weights, out):
    """How `.bin` files were read before: every tensor in memory at once."""
    import torch

    from keras_ov2.convert import backbone_from_open_clip

    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k: v.float().numpy() for k, v in state.items()}
    config = json.loads(Path(weights).with_name("open_clip_config.json").read_text())
    backbone = backbone_from_open_clip(state, config, projection=False)
    backbone.save_to_preset(str(out))


def run_worker(folder, weights, reader):
    import keras  # noqa: F401  (imports counted in the baseline)

    import keras_ov2  # noqa: F401
    from keras_ov2.convert import convert_to_preset

    if reader == "torch":
        import torch  # noqa: F401
    path = Path(folder) / weights
    out = Path(folder) / "out"
    shutil.rmtree(out, ignore_errors=True)
    baseline = proc_status_kb("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    if reader == "torch":
        convert_with_torch_load(path, out)
    else:
        depth = json.loads(path.with_name("open_clip_config.json").read_text())
        depth = depth["model_cfg"]["vision_cfg"]["layers"]
        preset = PRESET if depth == 24 else None  # the preset is the full depth
        convert_to_preset(path.parent if preset else path, out, preset=preset,
                          projection=False if not preset else None)
    seconds = time.perf_counter() - start
    metadata = json.loads((out / "metadata.json").read_text())
    print_result({
        "file_mb": path.stat().st_size / 2**20,
        "float32_mb": metadata["parameter_count"] * 4 / 2**20,
        "extra_mb": (proc_status_kb("VmHWM") - baseline) / 1024,
        "baseline_mb": baseline / 1024,
        "seconds": seconds,
    })


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(*args.worker)
    root = Path(tempfile.mkdtemp(prefix="convert_memory_"))
    try:
        print(f"Writing a synthetic ViT-L/14 release ({args.depth} blocks) in {root} ...",
              flush=True)
        write_release(root, args.depth)
        results = {}
        for label, (weights, reader) in RUNS.items():
            results[label] = run_in_subprocess(
                __file__, ["--worker", str(root), weights, reader], label
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{machine()}; JAX backend; "
          f"ViT-L/14 @224, {args.depth} blocks")
    print(f"{'weights file, reader':36} | {'file MB':>8} | {'extra MB':>8} | "
          f"{'/ file':>6} | {'/ f32 weights':>13} | {'s':>5} | baseline MB")
    print("-" * 104)
    for label, r in results.items():
        print(f"{label:36} | {r['file_mb']:8.0f} | {r['extra_mb']:8.0f} | "
              f"{r['extra_mb'] / r['file_mb']:6.2f} | {r['extra_mb'] / r['float32_mb']:13.2f} | "
              f"{r['seconds']:5.1f} | {r['baseline_mb']:.0f}")


if __name__ == "__main__":
    main()
