"""What pretraining puts into the encoder: OV2 (keep 0.35, 1.0) vs OV1 vs random.

Pretrains, on the same data (the built-in `SyntheticScenes` at 84 px, same
seed, no augmentation), for the same number of steps of the same batch size
and with the same optimizer recipe (AdamW, peak lr 5e-4, 5% warmup, cosine):
- OV2: the captioner preset `openvision2_captioner_tiny_patch14_84` through
  `keras_ov2.training.pretrain` (its defaults: detailed captions), at keep ratio
  0.35 (the authors') and at 1.0 (no token masking);
- OV1: `OpenVisionCLIPS` preset `openvision_clips_tiny_patch14_84` (web
  caption = short caption, detailed caption for the sentence and the
  caption decoder), fitted on `make_pretraining_dataset` batches;
both presets hold the same encoder (4 blocks, width 128, patch 14; OV1's
projection head sits after the pooled output and is not probed). Then runs
the linear probes of `keras_ov2.evaluation` on each trained encoder and on a
randomly initialised one, and prints one table: accuracy per task and
encoder, with chance, then the training time and final loss per model.

    python benchmarks/probe_comparison.py                 # defaults: 600 steps of 16
    python benchmarks/probe_comparison.py --steps 200 --train 400 --test 200 --json out.json
"""

import argparse
import functools
import json
import os
import sys
import tempfile
import time

from step_measure import machine

os.environ.setdefault("KERAS_BACKEND", "jax")

OV2_PRESET = "openvision2_captioner_tiny_patch14_84"
OV1_PRESET = "openvision_clips_tiny_patch14_84"
IMAGE_SIZE = 84
LEARNING_RATE = 5e-4  # pretrain()'s default, used for every model
COLUMNS = ("ov2_keep0.35", "ov2_keep1.0", "ov1", "random")
HEADERS = ("OV2 0.35", "OV2 1.0", "OV1", "random")
TASK_KIND = {"count": "attribute", "colours": "attribute", "shapes": "attribute",
             "left_colour": "attribute", "left_shape": "attribute",
             "left_size": "attribute", "pair_relation": "relation"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--train", type=int, default=1000, help="probe training scenes")
    p.add_argument("--test", type=int, default=500, help="probe test scenes")
    p.add_argument("--seed", type=int, default=0, help="data, initialisation, probes")
    p.add_argument("--ov2-caption-field", choices=("short_caption", "caption"),
                   help="what OV2 learns to caption (default: pretrain's, the detailed "
                   "caption)")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def say(*parts):
    print(*parts, flush=True)


def warmup(steps):
    """The recipe's warmup for every model: 5% of the steps."""
    return max(1, steps // 20)


def train_ov2(args, keep_ratio, folder, report=True):
    """`pretrain()` of the OV2 preset; `report=False` skips its held-out
    measures (and `summary` has no "loss_before", "loss_after", "exact_match")."""
    from keras_ov2.training import Stage
    from keras_ov2.training import load_captioner
    from keras_ov2.training import pretrain

    stage = Stage(IMAGE_SIZE, args.steps, args.batch_size, warmup_steps=warmup(args.steps))
    result = pretrain(OV2_PRESET, stages=(stage,),
                      keep_ratio=keep_ratio, output_dir=folder, seed=args.seed,
                      caption_field=args.ov2_caption_field, learning_rate=LEARNING_RATE,
                      print_fn=functools.partial(say, f"[OV2 keep {keep_ratio:g}]"),
                      report=report)
    summary = dict(seconds=result["seconds"], final_loss=result["losses"][-1][2],
                   objective=f"caption ({result['caption_field']})")
    if report:
        summary.update((key, result[key]) for key in ("loss_before", "loss_after",
                                                      "exact_match"))
    return load_captioner(folder).backbone, summary


def train_ov1(args):
    import keras

    from keras_ov2.data import SyntheticScenes
    from keras_ov2.data import make_pretraining_dataset
    from keras_ov2.models import OpenVisionCLIPS
    from keras_ov2.training import Progress
    from keras_ov2.training.pretrain import DEFAULT_SCENES

    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    # As pretrain(): its default scenes of the seed, batches shuffled by seed + stage 0.
    source = SyntheticScenes(**DEFAULT_SCENES, image_size=IMAGE_SIZE, seed=args.seed)
    model = OpenVisionCLIPS.from_preset(OV1_PRESET, load_weights=False)
    batches = make_pretraining_dataset(source, IMAGE_SIZE, args.batch_size,
                                       caption_field=("short_caption", "caption"),
                                       seed=args.seed, augment_images=False)
    model.compile(learning_rate=LEARNING_RATE, total_steps=args.steps,
                  warmup_steps=warmup(args.steps))
    label = f"[OV1] [{IMAGE_SIZE} px]"
    say(f"{label} {args.steps} steps of {args.batch_size} images, peak lr {LEARNING_RATE:g}")
    progress = Progress(label, args.steps, args.batch_size, max(1, args.steps // 12), say)
    model.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0,
              callbacks=[progress], shuffle=False)
    summary = dict(seconds=time.perf_counter() - started, final_loss=progress.history[-1][1],
                   objective="contrastive + 2 x caption (detailed)")
    return model.backbone, summary


def random_encoder(seed):
    import keras

    from keras_ov2 import OpenVision2Backbone

    keras.utils.set_random_seed(seed)
    return OpenVision2Backbone.from_preset(OV2_PRESET, load_weights=False)


def format_table(rows):
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    acc = {(r["task"], r["encoder"]): r["accuracy"] for r in rows}
    chance = {r["task"]: r["chance"] for r in rows}
    lines = [("task", "kind", *HEADERS, "chance")]
    for task in tasks:
        lines.append((task, TASK_KIND.get(task, ""),
                      *(f"{acc[task, c]:.3f}" for c in COLUMNS), f"{chance[task]:.3f}"))
    means = [sum(acc[t, c] for t in tasks) / len(tasks) for c in COLUMNS]
    lines.append(("mean", "", *(f"{m:.3f}" for m in means),
                  f"{sum(chance.values()) / len(tasks):.3f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths)))
                     for line in lines)


def main(argv=None):
    args = parse_args(argv)
    import keras

    from keras_ov2.evaluation import probe_results
    from keras_ov2.evaluation import synthetic_eval_set

    started = time.perf_counter()
    say(f"machine: {machine()}; "
        f"keras {keras.__version__}, backend {keras.backend.backend()}")
    say(f"setup: {args.steps} steps of {args.batch_size} per model at {IMAGE_SIZE} px, "
        f"seed {args.seed}; probes on {args.train} train / {args.test} test scenes")
    eval_set = synthetic_eval_set(args.train, args.test, IMAGE_SIZE, args.seed)
    rows, training = [], {}

    def probe(name, encoder):
        t = time.perf_counter()
        rows.extend(probe_results(eval_set, encoder, encoder=name, seed=args.seed))
        say(f"[{name}] probes done in {time.perf_counter() - t:.0f} s")

    with tempfile.TemporaryDirectory(prefix="probe_comparison_") as tmp:
        for keep in (0.35, 1.0):
            name = f"ov2_keep{keep:g}" if keep != 1 else "ov2_keep1.0"
            encoder, training[name] = train_ov2(args, keep, os.path.join(tmp, name))
            probe(name, encoder)
    encoder, training["ov1"] = train_ov1(args)
    probe("ov1", encoder)
    probe("random", random_encoder(args.seed))

    say()
    say(f"Linear-probe accuracy on {eval_set.name}, encoders after {args.steps} steps of "
        f"{args.batch_size}:")
    say(format_table(rows))
    say()
    say(f"{'model':<8} {'train_s':>7} {'img/s':>6} {'final_loss':>10}  objective")
    for name, header in zip(COLUMNS[:3], HEADERS[:3]):
        t = training[name]
        rate = args.steps * args.batch_size / t["seconds"]
        extra = (f"; held-out {t['loss_before']:.3f} -> {t['loss_after']:.3f}"
                 if "loss_after" in t else "")
        say(f"{header:<8} {t['seconds']:>7.0f} {rate:>6.0f} {t['final_loss']:>10.3f}  "
            f"{t['objective']}{extra}")
    say("(train_s: the whole pretrain() call for OV2, incl. held-out loss, saving and "
        "sample captions; final_loss: mean training loss of the last logged window)")
    total = time.perf_counter() - started
    say(f"total wall time {total:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), eval_set=eval_set.name, results=rows,
                           training=training, total_seconds=total), f, indent=2)
        say(f"Wrote {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
