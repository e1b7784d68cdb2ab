"""`ov2 pretrain`: the main job, OpenVision 2's captioning-only pretraining."""

import argparse
import os

from keras_ov2.cli.common import CliError
from keras_ov2.cli.common import check_preset
from keras_ov2.variants import KEEP_RATIO

DEFAULT_OUTPUT = "runs/ov2_pretrain"


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
    from keras_ov2.training import parse_mesh as parse

    try:
        return parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_pretrain_parser(commands):
    p = commands.add_parser("pretrain", help="pretrain a captioner by captioning alone")
    p.add_argument("--preset", help="captioner preset name or folder (default, random "
                   "weights: on the built-in scenes openvision2_captioner_scenes_patch14_84, "
                   "the demo captioner with a vocabulary of their words; on other data "
                   "openvision2_captioner_tiny_patch14_84, the authors' vocabulary)")
    p.add_argument("--data", help="image-caption data: ArrayRecord, WebDataset .tar or Parquet "
                   "shards (a folder, file or quoted glob), or a folder with captions.jsonl "
                   "(default: the built-in synthetic scenes)")
    p.add_argument("--caption-field", help='record field to caption (default "caption": the '
                   "detailed captions of the built-in scenes, as OpenVision 2 trains on long "
                   'synthetic captions; "short_caption" is their alt-text)')
    p.add_argument("--stages", type=parse_stages,
                   help="image_size:steps:batch_size[:lr[:warmup_steps]],... (default "
                   "84:5000:16::250); warmup defaults to steps // 250, as the authors' "
                   "84 px stage (1,563 of 390,981)")
    p.add_argument("--keep-ratio", type=float, help="fraction of visual tokens kept in training "
                   f"(default: the authors' {KEEP_RATIO}, on every source)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="preset folder to write")
    p.add_argument("--seed", type=int, help="data order, initial weights, masking (0)")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (5e-4)")
    p.add_argument("--sequence-length", type=int, help="caption tokens (default: fit the data)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="Inception crop + colour jitter (default: the data's choice, off for "
                   "the built-in scenes, whose captions state colours and positions; else on)")
    p.add_argument("--workers", dest="num_workers", type=int,
                   help="Grain worker processes for decoding and augmentation (0)")
    p.add_argument("--mesh", type=parse_mesh, help="device mesh, data=N[,model=M] or JSON "
                   '{"data": N, "model": M} (JAX; default: one device); batch sizes are global')
    p.add_argument("--layout", choices=("data", "fsdp", "tensor"),
                   help="how the mesh splits the model (default data: replicated)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip measuring the run (held-out loss, sample captions, encoder "
                   "probes) and only save the weights")
    p.add_argument("--checkpoint-dir", help="save Orbax checkpoints there (a folder or "
                   "gs://...), and resume from the latest one found there")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints (default: only at the end of each stage)")
    p.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (3)")
    p.set_defaults(run=run_pretrain)


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
    from keras_ov2.training import MULTI_HOST_VARIABLES

    if any(name in os.environ for name in MULTI_HOST_VARIABLES):
        return
    try:
        make_distribution(mesh, layout or "data", model=preset)
    except (ValueError, RuntimeError) as error:
        raise CliError(f"--mesh {mesh} --layout {layout or 'data'}: {error}") from None


def run_pretrain(args):
    import keras

    from keras_ov2.data import SyntheticScenes
    from keras_ov2.distribution import LayoutError
    from keras_ov2.training import CheckpointError
    from keras_ov2.training import RunOptions
    from keras_ov2.training import pretrain

    print(f"Keras {keras.__version__} on {keras.backend.backend()}", flush=True)
    dataset = None if args.data is None else open_data(args.data)
    records = SyntheticScenes if dataset is None else dataset
    preset = RunOptions.resolve(records, args.preset).preset
    check_preset(preset)
    # Options left out take `pretrain`'s defaults (the data's, else the authors').
    names = ("stages", "keep_ratio", "seed", "caption_field", "learning_rate",
             "sequence_length", "augment", "num_workers", "mesh", "layout",
             "checkpoint_dir", "checkpoint_every", "keep_checkpoints")
    options = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.checkpoint_every and not args.checkpoint_dir:
        raise CliError("--checkpoint-every needs --checkpoint-dir.")
    if args.mesh is not None or args.layout is not None:
        check_mesh(args.mesh, args.layout, preset)
    try:
        pretrain(preset=args.preset, dataset=dataset, output_dir=args.output, report=args.report,
                 **options)
    except KeyError as error:  # a caption field the records do not have
        raise CliError(error.args[0]) from None
    except CheckpointError as error:
        raise CliError(f"--checkpoint-dir {args.checkpoint_dir}: {error}") from None
    except LayoutError as error:  # a dimension the mesh does not divide
        raise CliError(f"--mesh {args.mesh} --layout {args.layout or 'data'}: {error}") from None
