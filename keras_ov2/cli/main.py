"""`ov2`: builds the command line, chooses the Keras backend, runs a command.

The backend is `--backend`, else KERAS_BACKEND, else "jax". It is set before
anything imports Keras: the parsers import no model code, and a command
imports what it needs when it runs.
"""

import argparse
import os
import sys

from keras_ov2.cli.common import CliError
from keras_ov2.cli.convert import add_convert_parser
from keras_ov2.cli.data import add_data_parser
from keras_ov2.cli.evaluate import add_eval_parser
from keras_ov2.cli.inference import add_caption_parser
from keras_ov2.cli.inference import add_embed_parser
from keras_ov2.cli.presets import add_presets_parser
from keras_ov2.cli.pretrain import add_pretrain_parser

BACKENDS = ("jax", "tensorflow", "torch")


def add_backend_option(parser):
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else jax)")


def build_parser():
    parser = argparse.ArgumentParser(prog="ov2", description="OpenVision 2 for Keras 3.")
    add_backend_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    add_pretrain_parser(commands)
    add_caption_parser(commands)
    add_embed_parser(commands)
    add_presets_parser(commands)
    add_data_parser(commands)
    add_convert_parser(commands)
    add_eval_parser(commands)
    return parser


def choose_backend(argv):
    """Sets KERAS_BACKEND from `--backend` before any option's parser can
    import Keras; refuses a second backend in a process that runs Keras."""
    pre = argparse.ArgumentParser(add_help=False)
    add_backend_option(pre)
    known, _ = pre.parse_known_args(argv)
    backend = known.backend or os.environ.get("KERAS_BACKEND") or "jax"
    if "keras" in sys.modules:
        running = sys.modules["keras"].backend.backend()
        if running != backend:
            raise CliError(f"--backend {backend}: this Python process already runs Keras on "
                           f"{running}; set KERAS_BACKEND before importing Keras.")
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    """Runs `ov2 ...`; returns 0, or exits with status 1 (bad input) or 2 (bad usage)."""
    try:
        choose_backend(sys.argv[1:] if argv is None else argv)
    except CliError as error:
        print(f"ov2: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    args = build_parser().parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # Grain's read-ahead advice
    try:
        args.run(args)
    except CliError as error:
        print(f"ov2 {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    return 0
