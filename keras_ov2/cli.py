"""The `ov2` command: `ov2 pretrain`, `ov2 caption`, `ov2 embed`, ...

The Keras backend is `--backend`, else KERAS_BACKEND, else "jax". The
console script imports `keras_ov2`, hence Keras, before it reads its
arguments; when Keras came up on another backend than the chosen one, `ov2`
restarts itself once with KERAS_BACKEND set.
"""

import argparse
import json
import os
import sys
from pathlib import Path

BACKENDS = ("jax", "tensorflow", "torch")
REQUESTED_BACKEND = os.environ.get("KERAS_BACKEND")  # before the default below
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_OUTPUT = "runs/ov2_pretrain"


class CliError(Exception):
    """A problem with the user's input: reported in one line, exit status 1."""


def parse_stages(text):
    """"84:300:32,224:50:16" -> Stages (image_size:steps:batch_size[:learning_rate[:warmup]])."""
    from keras_ov2.training import Stage

    stages = []
    for part in text.split(","):
        fields = part.strip().split(":")
        try:
            if not 3 <= len(fields) <= 5:
                raise ValueError("expected 3 to 5 fields")
            size, steps, batch = (int(f) for f in fields[:3])
            lr = float(fields[3]) if len(fields) > 3 and fields[3] else None
            warmup = int(fields[4]) if len(fields) > 4 else None
            stages.append(Stage(size, steps, batch, learning_rate=lr, warmup_steps=warmup))
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"bad stage {part!r} ({error}); expected image_size:steps:batch_size"
                "[:learning_rate[:warmup_steps]], e.g. 84:300:32,224:50:16 or "
                "84:390981:32768:1.024e-3:1563"
            ) from None
    return stages


def parse_mesh(text):
    """"data=4,model=2" or '{"data": 4, "model": 2}' -> {"data": 4, "model": 2}."""
    from keras_ov2.training.setup import parse_mesh as parse

    try:
        return parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def read_image(path):
    """An image file -> uint8 (H, W, 3) RGB array, or a CliError naming the file."""
    import numpy as np
    from PIL import Image
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CliError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise CliError(f"cannot read {path} as an image ({error})") from None


def check_preset(preset):
    """The architecture of a preset (no download for a name), or a one-line
    failure for a name or folder that does not exist."""
    from keras_ov2.models import presets

    try:
        return presets.resolve(preset, load_weights=False)
    except ValueError as error:
        raise CliError(str(error)) from None


def resolve(preset, random_weights=False):
    """A preset name, folder or hub handle -> (what `from_preset` loads,
    load_weights). A released name is downloaded and converted on the fly,
    or refused offline with the fix; a preset without weights is refused.
    Random weights only with `--random-weights`, and then said on stdout."""
    from keras_ov2.models import presets

    try:
        folder = presets.resolve(preset, load_weights=not random_weights)
    except ValueError as error:  # unknown name, a release that does not convert
        raise CliError(str(error)) from None
    except OSError as error:  # no weights, no hub, a broken download
        raise CliError(
            f"{error} To run on random weights anyway, pass --random-weights."
        ) from None
    if random_weights:
        print(f"Using random weights (--random-weights): {preset} is not trained.", flush=True)
    return folder, not random_weights


def preset_file(preset, name):
    """A preset's JSON file (local folder or hub handle), or None."""
    from keras_hub.src.utils.preset_utils import check_file_exists
    from keras_hub.src.utils.preset_utils import load_json

    return load_json(preset, name) if check_file_exists(preset, name) else None


def preset_image_size(preset):
    """The image size a preset was trained at: its image converter, else its metadata."""
    converter = preset_file(preset, "image_converter.json")
    if converter and converter["config"].get("image_size"):
        return int(converter["config"]["image_size"][0])
    metadata = preset_file(preset, "metadata.json")
    return metadata and metadata.get("image_size")


def is_captioner(preset):
    return preset_file(preset, "task.json") is not None


def open_data(path):
    """`--data PATH` -> a source of raw records, or a CliError naming the layouts."""
    from keras_ov2.data import SourceError
    from keras_ov2.data import open_source

    try:
        return open_source(path)
    except SourceError as error:
        raise CliError(f"--data {path}: {error} Leave --data out to use the built-in "
                       "synthetic scenes.") from None


def check_mesh(mesh, layout, preset):
    """Fails early, in one line, on a mesh the devices or the backend cannot
    take; on several hosts the devices are known after initialization only."""
    from keras_ov2.distribution import make_distribution
    from keras_ov2.training.setup import MULTI_HOST_VARIABLES

    if any(name in os.environ for name in MULTI_HOST_VARIABLES):
        return
    try:
        make_distribution(mesh, layout or "data", model=preset)
    except (ValueError, RuntimeError) as error:
        raise CliError(f"--mesh {mesh} --layout {layout or 'data'}: {error}") from None


def run_pretrain(args):
    import keras

    from keras_ov2.training import DEFAULT_PRESET
    from keras_ov2.training import pretrain

    print(f"Keras {keras.__version__} on {keras.backend.backend()}", flush=True)
    check_preset(args.preset or DEFAULT_PRESET)
    dataset = None if args.data is None else open_data(args.data)
    if args.caption_field is None and dataset is not None:
        args.caption_field = "caption"
    # Options left out take `pretrain`'s defaults.
    names = ("preset", "stages", "keep_ratio", "seed", "caption_field",
             "learning_rate", "sequence_length", "augment", "num_workers", "mesh",
             "layout", "checkpoint_dir", "checkpoint_every", "keep_checkpoints")
    options = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.checkpoint_every and not args.checkpoint_dir:
        raise CliError("--checkpoint-every needs --checkpoint-dir.")
    if args.mesh is not None or args.layout is not None:
        check_mesh(args.mesh, args.layout, args.preset or DEFAULT_PRESET)
    from keras_ov2.training.checkpoint import CheckpointError

    try:
        pretrain(dataset=dataset, output_dir=args.output, **options)
    except KeyError as error:  # a caption field the records do not have
        raise CliError(error.args[0]) from None
    except CheckpointError as error:
        raise CliError(f"--checkpoint-dir {args.checkpoint_dir}: {error}") from None


def run_caption(args):
    import numpy as np

    from keras_ov2 import OpenVision2Captioner
    from keras_ov2.data.augment import resize
    from keras_ov2.training.pretrain import tidy

    images = [read_image(path) for path in args.images]
    if not is_captioner(check_preset(args.preset)):  # before any download
        raise CliError(
            f"preset {args.preset!r} holds an encoder only (no task.json); `ov2 caption` "
            "needs a captioner preset, such as the folder `ov2 pretrain` writes."
        )
    folder, weights = resolve(args.preset, args.random_weights)
    captioner = OpenVision2Captioner.from_preset(folder, load_weights=weights)
    size = captioner.preprocessor.image_converter.image_size[0]
    length = args.max_length or captioner.preprocessor.sequence_length
    for start in range(0, len(images), args.batch_size):
        batch = np.stack([resize(image, size) for image in images[start : start + args.batch_size]])
        captions = captioner.generate(batch, max_length=length)
        for path, caption in zip(args.images[start:], captions):
            print(f"{path}: {tidy(caption)}", flush=True)


def run_embed(args):
    import numpy as np

    from keras_ov2 import OpenVision2Backbone
    from keras_ov2 import OpenVision2ImageConverter

    images = [read_image(path) for path in args.images]
    folder, weights = resolve(args.preset, args.random_weights)
    size = args.image_size or preset_image_size(folder)
    if not size:
        raise CliError(f"preset {args.preset!r} does not say its image size; pass --image-size.")
    backbone = OpenVision2Backbone.from_preset(folder, load_weights=weights)
    converter = OpenVision2ImageConverter(image_size=(size, size))
    x = np.stack([np.asarray(converter(image)) for image in images])
    outputs = backbone.predict(x, batch_size=args.batch_size, verbose=0)
    features = outputs["sequence_output" if args.tokens else "pooled_output"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features)
    kind = "patch tokens" if args.tokens else "pooled features"
    print(f"Wrote {kind} {features.shape} {features.dtype} of {len(images)} images to {out}")


def cache_state(name):
    """How a released preset's weights stand in the conversion cache."""
    from keras_ov2.convert.hub import converted_folder
    from keras_ov2.models import presets

    metadata = presets.list_presets()[name]
    if not metadata.get("source"):
        return "config only (pretrain from it)"
    folder = converted_folder(metadata["source"])
    if not presets.has_weights(folder):
        return "not converted yet"
    saved = json.loads((folder / "metadata.json").read_text())
    revision = saved.get("source_revision")
    return f"cached ({saved['converted_by']}" + (f", revision {revision[:10]})" if revision else ")")


def run_presets(args):
    from keras_ov2.models import presets

    rows = [("name", "params", "image", "source", "weights")]
    for name, metadata in presets.list_presets().items():
        rows.append((
            name, f"{metadata['params'] / 1e6:.1f}M", f"{metadata.get('image_size', '-')} px",
            (metadata.get("source") or "-").removeprefix("hf://"), cache_state(name),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def add_random_weights(parser):
    parser.add_argument("--random-weights", action="store_true",
                        help="use the preset's architecture with random weights (no download)")


def build_parser():
    parser = argparse.ArgumentParser(prog="ov2", description="OpenVision 2 for Keras 3.")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else jax)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("pretrain", help="pretrain a captioner by captioning alone")
    p.add_argument("--preset", help="captioner preset name or folder (default: "
                   "openvision2_captioner_tiny_patch14_84, random weights)")
    p.add_argument("--data", help="image-caption data: ArrayRecord, WebDataset .tar or Parquet "
                   "shards (a folder, file or quoted glob), or a folder with captions.jsonl "
                   "(default: the built-in synthetic scenes)")
    p.add_argument("--caption-field", help='record field to caption (default "short_caption" '
                   'for the built-in scenes, whose long "caption" a tiny model learns slowly; '
                   '"caption" for --data)')
    p.add_argument("--stages", type=parse_stages,
                   help="image_size:steps:batch_size[:lr[:warmup_steps]],... (default "
                   "84:1500:16::75); warmup defaults to steps // 250, as the authors' "
                   "84 px stage (1,563 of 390,981)")
    p.add_argument("--keep-ratio", type=float, help="fraction of visual tokens kept in training "
                   "(0.35; 1.0 on the built-in scenes, see the README)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="preset folder to write")
    p.add_argument("--seed", type=int, help="data order, initial weights, masking (0)")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (5e-4)")
    p.add_argument("--sequence-length", type=int, help="caption tokens (default: fit the data)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="Inception crop + colour jitter (default: on, off for the built-in "
                   "scenes, whose captions state colours and positions)")
    p.add_argument("--workers", dest="num_workers", type=int,
                   help="Grain worker processes for decoding and augmentation (0)")
    p.add_argument("--mesh", type=parse_mesh, help="device mesh, data=N[,model=M] or JSON "
                   '{"data": N, "model": M} (JAX; default: one device); batch sizes are global')
    p.add_argument("--layout", choices=("data", "fsdp", "tensor"),
                   help="how the mesh splits the model (default data: replicated)")
    p.add_argument("--checkpoint-dir", help="save checkpoints there, and resume from the "
                   "latest one found there")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints (default: only at the end of each stage)")
    p.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (3)")
    p.set_defaults(run=run_pretrain)

    p = commands.add_parser("caption", help="caption image files with a captioner preset")
    p.add_argument("preset", help="captioner preset name or folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--max-length", type=int, help="tokens to generate (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=32)
    add_random_weights(p)
    p.set_defaults(run=run_caption)

    p = commands.add_parser("embed", help="encode image files into features (.npy)")
    p.add_argument("preset", help="encoder or captioner preset name or folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--image-size", type=int, help="default: the preset's")
    p.add_argument("--tokens", action="store_true",
                   help="save the patch tokens (B, N, D) instead of pooled (B, D)")
    p.add_argument("--batch-size", type=int, default=32)
    add_random_weights(p)
    p.set_defaults(run=run_embed)

    p = commands.add_parser("presets", help="list the presets, their sources and cached weights")
    p.set_defaults(run=run_presets)

    from keras_ov2.data.cli import add_data_parser

    add_data_parser(commands, CliError)
    from keras_ov2.convert.cli import add_convert_parser

    add_convert_parser(commands)
    from keras_ov2.evaluation.cli import add_eval_parser

    add_eval_parser(commands, CliError)
    return parser


# Runs `main` from the imported module, not as __main__: a second copy of this
# module would have its own CliError, which `main` would not catch.
RESTART = "import sys; from keras_ov2.cli import main; sys.exit(main())"


def chosen_backend(args):
    return args.backend or REQUESTED_BACKEND or "jax"


def use_backend(backend, restart):
    """Runs on `backend`: Keras is already imported, so the console script
    restarts itself once on another backend; a call from Python cannot."""
    import keras

    if keras.backend.backend() == backend:
        return
    if not restart:
        raise CliError(f"--backend {backend}: this Python process already runs Keras on "
                       f"{keras.backend.backend()}; set KERAS_BACKEND before importing Keras.")
    env = dict(os.environ, KERAS_BACKEND=backend)
    os.execve(sys.executable, [sys.executable, "-c", RESTART, *sys.argv[1:]], env)


def main(argv=None):
    """Runs `ov2 ...`; returns 0, or exits with status 1 (bad input) or 2 (bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        use_backend(chosen_backend(args), restart=argv is None)  # argv: a call from Python
    except CliError as error:
        print(f"ov2: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # Grain's read-ahead advice
    try:
        args.run(args)
    except CliError as error:
        print(f"ov2 {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    return 0


if __name__ == "__main__":  # python -m keras_ov2.cli: run the imported module's main
    from keras_ov2.cli import main as run_imported

    sys.exit(run_imported())
