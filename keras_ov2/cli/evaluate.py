"""`ov2 eval`: linear probes and zero-shot accuracy of a preset, as a table."""

import json
from pathlib import Path

from keras_ov2.cli.common import CliError
from keras_ov2.cli.common import add_random_weights
from keras_ov2.cli.common import is_captioner
from keras_ov2.cli.common import positive_int
from keras_ov2.cli.common import preset_image_size
from keras_ov2.cli.common import resolve
from keras_ov2.evaluation.tasks import CAPTION_FIELDS

SYNTHETIC = "synthetic"
DEFAULT_SYNTHETIC_SIZES = (1000, 500)  # training, test scenes


def add_eval_parser(subparsers):
    p = subparsers.add_parser(
        "eval", help="measure an encoder: linear probes and zero-shot by caption scoring",
        description="Prints accuracy and chance level per task and method. Without "
        "--probe or --zero-shot: probes, plus zero-shot when PRESET is a captioner.",
    )
    p.add_argument("preset", metavar="PRESET", help="encoder or captioner preset name or folder")
    p.add_argument("--data", default=SYNTHETIC, help="'synthetic' (the built-in scenes: "
                   "colour, shape, size, count, left/right tasks) or a folder with one "
                   "subfolder of images per class")
    p.add_argument("--probe", action="store_true", help="linear probes on frozen features")
    p.add_argument("--zero-shot", action="store_true",
                   help="zero-shot by caption scoring (captioner presets)")
    p.add_argument("--train", type=positive_int, metavar="N", help="training images "
                   "(default: 1000 scenes; a folder's images not in the test split)")
    p.add_argument("--test", type=positive_int, metavar="N",
                   help="test images (default: 500 scenes; a quarter of a folder)")
    p.add_argument("--random-baseline", action="store_true", help="also probe a randomly "
                   "initialised encoder of the same architecture")
    add_random_weights(p)
    p.add_argument("--features", default="both", help="probe input: the pooled output "
                   "(pooled), a grid of mean patch tokens (grid), or both (default)")
    p.add_argument("--grid", type=positive_int, default=2,
                   help="the token grid is GRID x GRID cells (default 2)")
    p.add_argument("--image-size", type=positive_int, help="default: the preset's")
    p.add_argument("--caption-field", choices=CAPTION_FIELDS, default="caption",
                   help="caption style the captioner learnt, for the scenes' prompts "
                   "(default: the detailed captions, as ov2 pretrain trains on)")
    p.add_argument("--template", default="{}",
                   help="zero-shot prompt of a folder's class names (default '{}')")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0, help="scenes, splits, random encoder")
    p.add_argument("--out", help="also write the results to this .json file")
    p.set_defaults(run=run_eval)


def load_models(args):
    """(encoder, captioner or None, preset folder, image size)."""
    from keras_ov2.models import OpenVision2Backbone
    from keras_ov2.models import OpenVision2Captioner

    folder, weights = resolve(args.preset, args.random_weights)
    captioner_preset = is_captioner(folder)
    if args.zero_shot and not captioner_preset:
        raise CliError(f"preset {args.preset!r} holds an encoder only (no task.json); "
                    "--zero-shot scores captions and needs a captioner preset.")
    captioner, size = None, args.image_size
    if captioner_preset:
        captioner = OpenVision2Captioner.from_preset(folder, load_weights=weights)
        encoder = captioner.backbone
        size = size or captioner.preprocessor.image_converter.image_size[0]
    else:
        encoder = OpenVision2Backbone.from_preset(folder, load_weights=weights)
        size = size or preset_image_size(folder)
    if not size:
        raise CliError(f"preset {args.preset!r} does not say its image size; pass --image-size.")
    return encoder, captioner, folder, int(size)


def load_eval_set(args, size):
    from keras_ov2.evaluation import FolderError
    from keras_ov2.evaluation import folder_eval_set
    from keras_ov2.evaluation import synthetic_eval_set

    try:
        if args.data == SYNTHETIC:
            train, test = DEFAULT_SYNTHETIC_SIZES
            return synthetic_eval_set(args.train or train, args.test or test, size, args.seed,
                                      args.caption_field)
        return folder_eval_set(args.data, size, args.train, args.test, args.seed,
                               args.template)
    except (FolderError, ValueError) as problem:
        raise CliError(f"--data {args.data}: {problem}") from None


def fit_sequence_length(captioner, eval_set):
    """Shortens the captioner's caption slots to the longest prompt: slots
    past the text change no score (the decoder is causal over the text) but
    cost compute in the vocabulary head."""
    texts = sorted({text for task in eval_set.tasks for image in task.test_prompts or ()
                    for prompts in image or () for text in prompts})
    if texts:
        preprocessor = captioner.preprocessor
        longest = max(len(ids) for ids in preprocessor.tokenizer.tokenize(texts))
        preprocessor.sequence_length = min(preprocessor.sequence_length, longest + 3)


def format_table(rows):
    """The results as aligned text, one line per task, method and encoder."""
    header = ("task", "method", "encoder", "accuracy", "chance", "train", "test")
    lines = [header] + [
        (r["task"], r["method"], r["encoder"], f"{r['accuracy']:.3f}", f"{r['chance']:.3f}",
         str(r["num_train"]), str(r["num_test"]))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def run_eval(args):
    import keras

    from keras_ov2.models import OpenVision2Backbone
    from keras_ov2.evaluation import probe_results
    from keras_ov2.evaluation import zero_shot_results
    from keras_ov2.evaluation.features import FEATURES

    if args.features not in FEATURES:
        raise CliError(f"--features {args.features}: expected one of {', '.join(FEATURES)}.")
    if args.random_baseline and args.zero_shot and not args.probe:
        raise CliError("--random-baseline compares linear probes; add --probe.")
    keras.utils.set_random_seed(args.seed)
    encoder, captioner, folder, size = load_models(args)
    probe = args.probe or not args.zero_shot
    zero_shot = args.zero_shot or (not args.probe and captioner is not None)
    eval_set = load_eval_set(args, size)
    print(f"Evaluating {args.preset} on {eval_set.name}, images at {size} px.", flush=True)
    if eval_set.skipped:
        print(f"Skipped unreadable images: {eval_set.skipped}", flush=True)
    options = dict(features=args.features, grid=args.grid, batch_size=args.batch_size,
                   seed=args.seed)
    rows = []
    if probe:
        rows += probe_results(eval_set, encoder, **options)
    if zero_shot:
        fit_sequence_length(captioner, eval_set)
        rows += zero_shot_results(eval_set, captioner, batch_size=args.batch_size)
    if args.random_baseline:
        random_encoder = OpenVision2Backbone.from_preset(folder, load_weights=False)
        rows += probe_results(eval_set, random_encoder, encoder="random", **options)
    rows.sort(key=lambda r: (r["task"], r["method"] != "probe", r["encoder"] == "random"))
    print(format_table(rows), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "preset": args.preset, "data": eval_set.name, "image_size": size,
            "features": args.features, "grid": args.grid, "skipped": eval_set.skipped,
            "results": rows,
        }, indent=2))
        print(f"Wrote {out}")
