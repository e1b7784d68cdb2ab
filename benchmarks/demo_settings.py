"""Which demo settings let a tiny captioner learn the built-in scenes with 35% of its tokens?

Runs `keras_ov2.training.pretrain` once per named setting (below) on the
built-in `SyntheticScenes`, all with the same seed, and prints one table: per
object, how often count, colour and shape come out right in captions of 64
held-out scenes, generated from the training-time view (8 random draws of
the kept tokens, the likeliest caption kept) and from every token; the
held-out loss; and the seconds each run took. `ov2 pretrain`'s defaults were
chosen from this table (see the README).

    python benchmarks/demo_settings.py                         # every setting
    python benchmarks/demo_settings.py --settings base,patch7 --steps 600
"""

import argparse
import functools
import json
import os
import sys
import tempfile

from step_measure import machine

os.environ.setdefault("KERAS_BACKEND", "jax")

# Each setting changes `ov2 pretrain`'s defaults ("base") in one or more places:
#   preset (the scenes' vocabulary, or the 32,000 rows of BERT's), patch_size,
#   attention_mask, encoder_layers, decoder_layers: the captioner;
#   max_objects, position_grid: the scenes;
#   learning_rate, keep_ratio, caption_field, batch_size: the run.
SETTINGS = {
    "base": dict(),
    "keep1.0": dict(keep_ratio=1.0),
    "lr1e-3": dict(learning_rate=1e-3),
    "lr2e-3": dict(learning_rate=2e-3),
    "bert_vocab": dict(preset="openvision2_captioner_tiny_patch14_84"),
    "prefix": dict(attention_mask="prefix"),
    "patch7": dict(patch_size=7),
    "patch7_prefix": dict(patch_size=7, attention_mask="prefix"),
    "patch21": dict(patch_size=21),
    "patch28": dict(patch_size=28),
    "encoder8": dict(encoder_layers=8),
    "decoder4": dict(decoder_layers=4),
    "grid6": dict(position_grid=6),
    "objects3": dict(max_objects=3),
    "objects3_lr2e-3": dict(max_objects=3, learning_rate=2e-3),
    "objects3_grid6": dict(max_objects=3, position_grid=6),
}
DEFAULTS = dict(preset="openvision2_captioner_scenes_patch14_84", keep_ratio=0.35,
                learning_rate=5e-4, patch_size=14, attention_mask="causal", encoder_layers=4,
                decoder_layers=2, max_objects=2, position_grid=12, caption_field="caption",
                batch_size=16)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated names among {', '.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=1000, help="training steps per setting (ov2 pretrain's)")
    p.add_argument("--caption-field", help="override every setting's caption field")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        p.error(f"unknown settings {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    return args


def say(*parts):
    print(*parts, flush=True)


def captioner_folder(setting, folder):
    """The setting's preset with its patch size, depths and decoder
    mask, saved (random weights) to `folder`."""
    from keras_ov2.models.openvision2.openvision2_captioner import OpenVision2Captioner

    captioner = OpenVision2Captioner.from_preset(setting["preset"], load_weights=False)
    config = captioner.get_config()
    config["backbone"]["config"]["patch_size"] = setting["patch_size"]
    config["backbone"]["config"]["num_layers"] = setting["encoder_layers"]
    config["decoder"]["config"]["attention_mask"] = setting["attention_mask"]
    config["decoder"]["config"]["num_layers"] = setting["decoder_layers"]
    OpenVision2Captioner.from_config(config).save_to_preset(folder)
    return folder


def run(name, args):
    import keras

    from keras_ov2.data import SyntheticScenes
    from keras_ov2.training import Stage
    from keras_ov2.training import pretrain

    setting = {**DEFAULTS, **SETTINGS[name]}
    if args.caption_field:
        setting["caption_field"] = args.caption_field
    say(f"== {name}: {json.dumps(setting)}")
    keras.utils.set_random_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        preset = captioner_folder(setting, os.path.join(tmp, "preset"))
        scenes = SyntheticScenes(100_000, image_size=84, seed=args.seed,
                                 max_objects=setting["max_objects"],
                                 position_grid=setting["position_grid"])
        stage = Stage(84, args.steps, setting["batch_size"], warmup_steps=args.steps // 20)
        result = pretrain(preset, scenes, stages=(stage,), keep_ratio=setting["keep_ratio"],
                          output_dir=os.path.join(tmp, "out"), seed=args.seed,
                          caption_field=setting["caption_field"],
                          learning_rate=setting["learning_rate"], augment=False,
                          print_fn=functools.partial(say, " "))
    masked = result["attribute_accuracy"]
    every = result.get("attribute_accuracy_all_tokens") or masked
    return dict(setting=name, **setting, steps=args.steps, view=result["view"],
                training_view=masked, every_token=every, loss=result["loss_after"],
                seconds=result["seconds"])


def format_table(rows):
    def cells(accuracy):
        return "  ".join(f"{accuracy[k]:6.0%}" for k in ("count", "colour", "shape"))

    head = (f"{'setting':<15} {'training view: count colour  shape':>36}   "
            f"{'every token: count colour  shape':>34} {'loss':>6} {'seconds':>8}")
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['setting']:<15} {cells(row['training_view']):>36}   "
                     f"{cells(row['every_token']):>34} {row['loss']:6.3f} "
                     f"{row['seconds']:8.0f}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    say(f"machine: {machine()}")
    rows = [run(name, args) for name in args.settings.split(",")]
    say(f"\nPer object, right in captions of 64 held-out scenes, after {args.steps} steps:")
    say(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
