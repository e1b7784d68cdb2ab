"""`ov2 convert`: released checkpoints -> preset folders, and back to open_clip."""

import argparse
import json
from pathlib import Path

from keras_ov2.cli.common import CliError
from keras_ov2.cli.common import preset_image_size
from keras_ov2.cli.common import resolve


def add_convert_parser(subparsers):
    p = subparsers.add_parser(
        "convert",
        help="convert a released checkpoint into a preset folder (or, with "
        "--to open_clip, a preset into open_clip files)",
    )
    p.add_argument("source", help="a folder with open_clip_config.json and open_clip "
                   "weights, a weights file (.bin, .safetensors), a JAX .npz, an "
                   "hf:// handle or a released preset name; with --to open_clip, a "
                   "keras_ov2 preset name or folder")
    p.add_argument("out_dir", nargs="?", help="folder to write (default with a released "
                   "preset: the conversion cache, where from_preset(NAME) finds it)")
    p.add_argument("--preset", help="the released preset these weights are: checks the "
                   "architecture and gives the folder that preset's metadata")
    p.add_argument("--head", dest="projection", action=argparse.BooleanOptionalAction,
                   help="keep open_clip's visual.proj as the v1 head (default: keep it "
                   "unless it is the identity; a preset decides for itself)")
    p.add_argument("--image-size", type=int, help="image size: of JAX parameters (they do "
                   "not record it), or written into the open_clip config")
    p.add_argument("--num-heads", type=int, help="attention heads of JAX parameters whose "
                   "width is none of the authors' sizes")
    p.add_argument("--to", choices=("keras", "open_clip"), default="keras",
                   help="direction (default keras)")
    p.add_argument("--refresh", action="store_true",
                   help="convert again even if the cache (or OUT_DIR) already holds it")
    p.add_argument("--safetensors", action="store_true",
                   help="with --to open_clip: write open_clip_model.safetensors, not .bin")
    p.set_defaults(run=run_convert)


def to_keras(args):
    from keras_ov2.convert import convert_to_preset
    from keras_ov2.convert.to_preset import target
    from keras_ov2.models.presets import has_weights

    goal = target(args.source, args.out_dir, args.preset)
    if goal.cached and has_weights(goal.out_dir) and not args.refresh:
        metadata = json.loads((goal.out_dir / "metadata.json").read_text())
        print(f"Already converted: {goal.out_dir} (from {metadata['converted_from']}, "
              f"{metadata['converted_by']}); --refresh converts it again.")
        return
    out = convert_to_preset(args.source, args.out_dir, preset=args.preset,
                            projection=args.projection, image_size=args.image_size,
                            num_heads=args.num_heads, refresh=args.refresh)
    metadata = json.loads((Path(out) / "metadata.json").read_text())
    kind = "captioner" if (Path(out) / "task.json").exists() else "encoder"
    print(f"Wrote the {kind} preset {out} ({metadata['params']:,} parameters) "
          f"converted from {metadata['converted_from']}.")
    for part in metadata.get("not_converted", []):
        print(f"  not converted: {part}")


def to_open_clip(args):
    from keras_ov2.models import OpenVision2Backbone
    from keras_ov2.convert import save_open_clip

    if not args.out_dir:
        raise CliError("--to open_clip needs an output folder.")
    folder, _ = resolve(args.source)
    size = args.image_size or preset_image_size(folder)
    if not size:
        raise CliError(f"preset {args.source!r} does not say its image size; pass --image-size.")
    backbone = OpenVision2Backbone.from_preset(folder)
    path = save_open_clip(backbone, args.out_dir, image_size=size, safetensors=args.safetensors)
    print(f"Wrote {path} and open_clip_config.json ({size} px) from {args.source}.")


def run_convert(args):
    try:
        to_open_clip(args) if args.to == "open_clip" else to_keras(args)
    except (ValueError, OSError, ImportError) as error:  # bad input, files, hub
        raise CliError(str(error)) from None
