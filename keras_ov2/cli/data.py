"""`ov2 data build`: check a user's image-caption data and store it as ArrayRecord shards."""

import argparse

from keras_ov2.cli.common import CliError
from keras_ov2.cli.common import is_positive
from keras_ov2.cli.common import positive_int
from keras_ov2.data.source_base import LAYOUTS

SYNTHETIC = "synthetic:"


def non_negative_int(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def add_data_parser(subparsers):
    data = subparsers.add_parser("data", help="prepare image-caption data for pretraining")
    commands = data.add_subparsers(dest="data_command", required=True)
    p = commands.add_parser(
        "build", help="check records and write the good ones as ArrayRecord shards",
        description=f"Reads SOURCE, skips the records pretraining could not use (counted by "
        f"reason) and writes the rest to OUT_DIR as ArrayRecord shards. SOURCE is "
        f"synthetic:N (N built-in scenes) or image-caption data; {LAYOUTS}. Run the same "
        f"command again over an interrupted OUT_DIR to resume: the finished shards are kept.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="synthetic:N, a folder, a file or a quoted glob")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the shards and summary.json")
    p.add_argument("--caption-field", action="append", dest="caption_fields", metavar="FIELD",
                   help='field every record needs a good caption in (default "caption"; '
                   "repeat for several); the other text fields are kept too")
    p.add_argument("--records-per-shard", type=positive_int, default=10_000, metavar="N",
                   help="source records per shard file; shard k holds the good ones of "
                   "records k*N to (k+1)*N-1 (default 10000)")
    p.add_argument("--workers", type=non_negative_int, default=0, metavar="N",
                   help="processes building shards side by side, one core each (default 0: "
                   "in this process); the shards are the same for any N")
    p.add_argument("--name", default="data", help="shard name prefix (default data)")
    p.set_defaults(run=run_build)


def open_cli_source(text):
    """SOURCE of `ov2 data build` -> a source, or a CliError naming it."""
    from keras_ov2.data import SourceError
    from keras_ov2.data import SyntheticScenes
    from keras_ov2.data import open_source

    if text.startswith(SYNTHETIC):
        count = text[len(SYNTHETIC):]
        if not is_positive(count):
            raise CliError(f"{text}: expected synthetic:N with N a positive number of scenes.")
        return SyntheticScenes(int(count))
    try:
        return open_source(text)
    except SourceError as problem:
        raise CliError(str(problem)) from None


def run_build(args):
    from keras_ov2.data import build_array_record

    source = open_cli_source(args.source)
    try:
        summary = build_array_record(source, args.out_dir, args.caption_fields,
                                     args.records_per_shard, args.name,
                                     num_workers=args.workers)
    except FileExistsError as problem:
        raise CliError(str(problem)) from None
    if not summary["records_written"]:
        raise CliError(f"{args.source}: no record passed the checks (skipped "
                    f"{summary['skipped']}); nothing written to {args.out_dir}.")
