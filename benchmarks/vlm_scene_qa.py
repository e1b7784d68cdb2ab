"""The paper's test at demo scale: a LLaVA-style model on each frozen encoder.

OpenVision 2 judges its encoders inside LLaVA, not by their captions. This
script does the same with the built-in scenes:
1. pretrains encoders as `probe_comparison.py` does (same scenes, steps,
   batch and recipe; `pretrain()` without its report): OV2 at keep 0.35,
   OV2 at keep 1.0 and OV1 (CLIPS); plus a randomly initialised encoder;
2. on each, frozen, builds `OpenVisionLLaVACausalLM`: the patch tokens of
   block -2, LLaVA's `mlp2x_gelu` projector and a small GPT-2 (KerasHub's
   `GPT2Backbone` from a config, random weights) reading the OpenVision
   tokenizer cut down to the questions' word-pieces
   (`OpenVision2Tokenizer.for_texts`); trains projector and language model
   with AdamW (warmup, cosine decay) on one-word-answer
   questions about training scenes (`keras_ov2.data.scene_questions`:
   count, colour, shape, size, POPE-style presence, left-of relation);
3. asks the same kinds of questions about held-out scenes, answers by greedy
   `generate`, and prints accuracy per question type and encoder beside
   chance (the most frequent training answer) and the pretraining seconds.

    python benchmarks/vlm_scene_qa.py                      # the defaults (SCALES)
    python benchmarks/vlm_scene_qa.py --pretrain-steps 100 --qa-steps 100 --encoders ov2_keep0.35,random
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time

from probe_comparison import IMAGE_SIZE
from probe_comparison import random_encoder
from probe_comparison import train_ov1
from probe_comparison import train_ov2
from step_measure import machine

os.environ.setdefault("KERAS_BACKEND", "jax")

ENCODERS = ("ov2_keep0.35", "ov2_keep1.0", "ov1", "random")
VISION_LAYER = -2  # LLaVA-1.5's mm_vision_select_layer
SEQUENCE_LENGTH = 16  # text tokens: [start] question answer [end] fit in 16


# The defaults per machine: "cpu" ends within 20 minutes on 2 cores; on a GPU
# or TPU the same comparison runs longer and wider.
SCALES = {
    "cpu": dict(pretrain_steps=400, batch_size=16, qa_train=2000, qa_test=200,
                qa_steps=1000, qa_batch_size=32, lm_width=128, lm_layers=2),
    "accelerator": dict(pretrain_steps=5000, batch_size=64, qa_train=20000, qa_test=1000,
                        qa_steps=5000, qa_batch_size=64, lm_width=256, lm_layers=4),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", default=",".join(ENCODERS),
                   help=f"comma-separated, among {', '.join(ENCODERS)}")
    p.add_argument("--scale", choices=tuple(SCALES),
                   help="the defaults below (default: accelerator when Keras sees a GPU or "
                   f"TPU, else cpu): {SCALES}")
    p.add_argument("--pretrain-steps", type=int, help="pretraining steps per encoder")
    p.add_argument("--batch-size", type=int, help="pretraining batch")
    p.add_argument("--qa-train", type=int, help="training scenes for the VLM")
    p.add_argument("--qa-test", type=int, help="held-out scenes asked about")
    p.add_argument("--qa-steps", type=int, help="VLM training steps")
    p.add_argument("--qa-batch-size", type=int)
    p.add_argument("--qa-learning-rate", type=float, default=1e-3)
    p.add_argument("--lm-width", type=int, help="the GPT-2's width")
    p.add_argument("--lm-layers", type=int, help="the GPT-2's blocks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder-dir", help="keep the pretrained encoders there, and reuse "
                   "those an earlier run with the same pretraining settings left")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    unknown = set(args.encoders.split(",")) - set(ENCODERS)
    if unknown:
        p.error(f"unknown encoders {sorted(unknown)}; known: {', '.join(ENCODERS)}")
    args.scale = args.scale or default_scale()
    for name, value in SCALES[args.scale].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # What probe_comparison's training functions read.
    args.steps, args.ov2_caption_field = args.pretrain_steps, None
    return args


def default_scale():
    import keras

    if keras.backend.backend() == "torch":  # keras.distribution is not there
        import torch

        return "accelerator" if torch.cuda.is_available() else "cpu"
    devices = keras.distribution.list_devices()
    return "cpu" if all(d.lower().startswith("cpu") for d in devices) else "accelerator"


def say(*parts):
    print(*parts, flush=True)


def qa_set(num_scenes, held_out, seed):
    """(images uint8 (Q, H, W, 3), questions, answers, types): every
    question about `num_scenes` scenes of pretrain()'s kind (training or
    held-out ones), one row each."""
    import numpy as np

    from keras_ov2.data import SyntheticScenes
    from keras_ov2.data import question_records
    from keras_ov2.training.pretrain import DEFAULT_SCENES

    scenes = SyntheticScenes(**{**DEFAULT_SCENES, "num_records": num_scenes},
                             image_size=IMAGE_SIZE, seed=seed)
    rows = question_records(scenes.held_out() if held_out else scenes, seed=seed)
    return (np.stack([r["image"] for r in rows]), [r["question"] for r in rows],
            [r["answer"] for r in rows], [r["type"] for r in rows])


def pretrained_encoder(name, args, folder):
    """(encoder, pretraining seconds) for `name`, pretrained into
    `folder/name`; one saved there by an earlier run with the same
    pretraining settings is loaded instead, with its recorded seconds."""
    from keras_ov2 import OpenVision2Backbone

    if name == "random":
        return random_encoder(args.seed), 0.0
    path = os.path.join(folder, name)
    record = os.path.join(path, "vlm_scene_qa_pretraining.json")
    settings = dict(steps=args.pretrain_steps, batch_size=args.batch_size, seed=args.seed)
    if os.path.exists(record):
        with open(record) as f:
            saved = json.load(f)
        if saved["settings"] == settings:
            say(f"[{name}] the encoder pretrained in {saved['seconds']:.0f} s, from {path}")
            return OpenVision2Backbone.from_preset(path), saved["seconds"]
    if name == "ov1":
        encoder, summary = train_ov1(args)
        encoder.save_to_preset(path)
    else:
        keep = float(name.removeprefix("ov2_keep"))
        encoder, summary = train_ov2(args, keep, path, report=False)
    with open(record, "w") as f:
        json.dump(dict(settings=settings, seconds=summary["seconds"]), f)
    return encoder, summary["seconds"]


def question_tokenizer(train):
    """The OpenVision tokenizer holding only the word-pieces of the training
    questions and of every possible answer."""
    from keras_ov2 import OpenVision2Tokenizer
    from keras_ov2.data import QUESTION_TYPES

    _, questions, answers, _ = train
    return OpenVision2Tokenizer.for_texts(
        [f"{q} {a}" for q, a in zip(questions, answers)]
        + [a for choices in QUESTION_TYPES.values() for a in choices])


def build_vlm(encoder, tokenizer, args):
    """The VLM on `encoder`, frozen; the projector and language model start
    from the same random weights for every encoder."""
    import keras
    import keras_hub

    import keras_ov2

    keras.utils.set_random_seed(args.seed)
    patches = (IMAGE_SIZE // encoder.patch_size) ** 2
    language = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=args.lm_layers,
        num_heads=max(1, args.lm_width // 64), hidden_dim=args.lm_width,
        intermediate_dim=4 * args.lm_width, dropout=0.0,
        max_sequence_length=patches + SEQUENCE_LENGTH,
    )
    backbone = keras_ov2.OpenVisionLLaVABackbone(encoder, language, vision_layer=VISION_LAYER,
                                                 freeze_vision=True)
    preprocessor = keras_ov2.OpenVisionLLaVACausalLMPreprocessor(
        tokenizer, keras_ov2.OpenVision2ImageConverter(image_size=(IMAGE_SIZE, IMAGE_SIZE)),
        sequence_length=SEQUENCE_LENGTH,
    )
    return keras_ov2.OpenVisionLLaVACausalLM(backbone, preprocessor)


def train_and_ask(encoder, tokenizer, train, test, args):
    """Fits a VLM on `train`; returns {type: accuracy} on `test`, the seconds
    to train and to answer, and a few (question, reply) examples."""
    import grain
    import keras
    import numpy as np

    started = time.perf_counter()
    model = build_vlm(encoder, tokenizer, args)
    rows = [{"images": i, "prompts": q, "responses": a} for i, q, a in zip(*train[:3])]
    # fit maps the preprocessor over the Grain batches.
    batches = (grain.MapDataset.source(rows).shuffle(seed=args.seed).repeat()
               .batch(args.qa_batch_size))
    warmup = max(1, args.qa_steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, args.qa_steps - warmup, warmup_target=args.qa_learning_rate, warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.AdamW(schedule))
    model.fit(batches, steps_per_epoch=args.qa_steps, epochs=1, verbose=0)
    trained = time.perf_counter()
    images, questions, answers, types = test
    replies = []
    for start in range(0, len(questions), 64):
        batch = slice(start, start + 64)
        replies += model.generate(
            {"images": images[batch], "prompts": questions[batch]},
            max_length=SEQUENCE_LENGTH, strip_prompt=True)
    right = collections.defaultdict(list)
    for kind, answer, reply in zip(types, answers, replies):
        right[kind].append(reply.strip().split(" ")[0] == answer)
    accuracy = {kind: float(np.mean(hits)) for kind, hits in right.items()}
    return (accuracy, trained - started, time.perf_counter() - trained,
            list(zip(questions[:6], replies[:6])))


def chance(train, test):
    """Per type: accuracy of always answering the most frequent training answer."""
    import numpy as np

    _, _, answers, types = train
    guess = {kind: collections.Counter(a for a, t in zip(answers, types) if t == kind)
             .most_common(1)[0][0] for kind in set(types)}
    _, _, answers, types = test
    hits = collections.defaultdict(list)
    for kind, answer in zip(types, answers):
        hits[kind].append(answer == guess[kind])
    return {kind: float(np.mean(h)) for kind, h in hits.items()}


def format_table(results, base):
    from keras_ov2.data import QUESTION_TYPES

    names = list(results)
    lines = [("question", *names, "chance")]
    for kind in QUESTION_TYPES:
        lines.append((kind, *(f"{results[n]['accuracy'][kind]:.0%}" for n in names),
                      f"{base[kind]:.0%}"))
    lines.append(("pretrain s", *(f"{results[n]['pretrain_seconds']:.0f}" for n in names), ""))
    lines.append(("VLM s", *(f"{results[n]['vlm_seconds']:.0f}" for n in names), ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths))) for line in lines)


def main(argv=None):
    args = parse_args(argv)
    import keras

    started = time.perf_counter()
    say(f"machine: {machine()}; keras {keras.__version__}, backend {keras.backend.backend()}; "
        f"scale {args.scale}")
    train = qa_set(args.qa_train, held_out=False, seed=args.seed)
    test = qa_set(args.qa_test, held_out=True, seed=args.seed)
    tokenizer = question_tokenizer(train)
    say(f"scene questions: {len(train[1])} to train on ({args.qa_train} scenes), "
        f"{len(test[1])} held out ({args.qa_test} scenes); the language model's "
        f"vocabulary: {tokenizer.vocabulary_size()} word-pieces")
    results = {}
    with tempfile.TemporaryDirectory(prefix="vlm_scene_qa_") as tmp:
        for name in args.encoders.split(","):
            encoder, seconds = pretrained_encoder(name, args, args.encoder_dir or tmp)
            accuracy, vlm_seconds, ask_seconds, examples = train_and_ask(
                encoder, tokenizer, train, test, args)
            results[name] = dict(accuracy=accuracy, pretrain_seconds=seconds,
                                 vlm_seconds=vlm_seconds, ask_seconds=ask_seconds)
            say(f"[{name}] VLM trained in {vlm_seconds:.0f} s, answered in "
                f"{ask_seconds:.0f} s; e.g. "
                + "; ".join(f"{q} -> {r!r}" for q, r in examples[:3]))
    base = chance(train, test)
    say(f"\nAnswers right on held-out scenes, per question type (encoders pretrained "
        f"{args.pretrain_steps} steps of {args.batch_size}; VLM {args.qa_steps} steps of "
        f"{args.qa_batch_size}, encoder frozen, block {VISION_LAYER}):")
    say(format_table(results, base))
    total = time.perf_counter() - started
    say(f"total wall time {total:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), results=results, chance=base,
                           total_seconds=total), f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
