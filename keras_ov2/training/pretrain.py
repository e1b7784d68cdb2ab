"""`pretrain`: OpenVision 2's captioning-only recipe, one resolution stage at a time."""

import dataclasses
import functools
import json
import re
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from keras_ov2.data import SyntheticScenes
from keras_ov2.data import split_held_out
from keras_ov2.data.augment import resize
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import check_record
from keras_ov2.data.decode import decode_caption
from keras_ov2.evaluation.scene_captions import describe_accuracy
from keras_ov2.evaluation.scene_captions import scene_caption_accuracy
from keras_ov2.models.common.recipe_optimizer import default_warmup_steps
from keras_ov2.training.resume import RunCheckpoints
from keras_ov2.training.setup import load_captioner
from keras_ov2.training.setup import setup_training

DEFAULT_PRESET = "openvision2_captioner_tiny_patch14_84"
AUTHORS_KEEP_RATIO = 0.35
HELD_OUT_SIZE = 32  # held-out scenes for the before/after loss and the caption accuracy


@dataclasses.dataclass
class Stage:
    """One progressive-resolution stage: `steps` batches of `batch_size`
    images at `image_size` px. `learning_rate` defaults to `pretrain`'s,
    `warmup_steps` to `default_warmup_steps(steps)` (0: no warmup)."""

    image_size: int
    steps: int
    batch_size: int
    learning_rate: float | None = None
    warmup_steps: int | None = None

    def __post_init__(self):
        for name in ("image_size", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Stage {name} must be a positive integer; got {value!r}.")
        warmup = self.warmup_steps
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int)
                                   or not 0 <= warmup < self.steps):
            raise ValueError(f"Stage warmup_steps must be an integer from 0 to steps - 1 "
                             f"({self.steps - 1}); got {warmup!r}.")

    @property
    def warmup(self):
        return default_warmup_steps(self.steps) if self.warmup_steps is None else self.warmup_steps


# 5 to 10 minutes on 2 CPU cores with JAX (24,000 images, 45-80 images/s). The
# demo's own warmup (5%), with which its figures in the README were measured.
DEFAULT_STAGES = (Stage(image_size=84, steps=1500, batch_size=16, warmup_steps=75),)


class Progress(keras.callbacks.Callback):
    """Prints the mean loss and the images/s of every `every` steps. Keras'
    per-batch `loss` is the running mean of the epoch (constant batch size
    here), so each step's loss is recovered by differencing. A resumed stage
    starts after `first_step`."""

    def __init__(self, label, steps, batch_size, every, print_fn, first_step=0):
        super().__init__()
        self.label, self.steps, self.batch_size = label, steps, batch_size
        self.every, self.print_fn, self.first_step = every, print_fn, first_step
        self.history = []  # (step, mean loss over the window)

    def on_train_begin(self, logs=None):
        self.total, self.window, self.start = 0.0, [], time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch + 1
        total = float(logs["loss"]) * (batch + 1)
        self.window.append(total - self.total)
        self.total = total
        now = time.perf_counter()
        if batch == 0:  # the first step includes compiling the train function
            self.print_fn(f"{self.label} step {step}/{self.steps}: loss {self.window[0]:.3f} "
                          f"(compiled in {now - self.start:.1f} s)")
            self.window, self.window_start, self.window_steps = [], now, 0
            return
        self.window_steps += 1
        if step % self.every and step != self.steps:
            return
        loss = float(np.mean(self.window))
        rate = self.window_steps * self.batch_size / max(now - self.window_start, 1e-9)
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.print_fn(f"{self.label} step {step}/{self.steps}: loss {loss:.3f}, "
                      f"{rate:.0f} images/s, lr {lr:.2e}")
        self.history.append((step, loss))
        self.window, self.window_start, self.window_steps = [], now, 0


def held_out_loss(captioner, images, captions):
    """Mean caption loss (as in training, weight included, no token masking)."""
    captioner.preprocessor.image_converter.image_size = images.shape[1:3]
    logs = captioner.evaluate(images, np.array(captions), batch_size=len(images),
                              verbose=0, return_dict=True)
    return float(logs["loss"])


def held_out_pairs(source, caption_field, image_size):
    """Up to HELD_OUT_SIZE good records among the first of `source`: their
    images (resized), captions and the records themselves. The search is
    bounded, so that a caption field no record has fails at once instead of
    reading a whole corpus."""
    images, captions, records, missing = [], [], [], []
    for index in range(min(len(source), 8 * HELD_OUT_SIZE)):
        record = source[index]
        try:
            image, caption = check_record(record, caption_field)
        except BadRecord as error:
            if error.reason == "missing_caption":
                missing.append(error)
            continue
        images.append(resize(image, image_size))
        captions.append(caption)
        records.append(record)
        if len(images) == HELD_OUT_SIZE:
            break
    if not images:
        detail = f" ({missing[0]})" if missing else ""
        raise KeyError(f"No usable record with a caption field {caption_field!r}{detail}.")
    return np.stack(images), captions, records


def known_captions(source, caption_field, count):
    """The good captions among the first `count` records (every one of a list)."""
    captions = []
    for index in range(min(count, len(source))):
        value = source[index].get(caption_field)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            try:
                captions.append(decode_caption(item))
            except BadRecord:
                pass
    return captions


def fitted_length(preprocessor, captions):
    """The preset's caption length, or less when the captions are shorter:
    the longest one + [bos], [eos] and [CLS], rounded up to a multiple of 4.
    Padding costs as much compute as words (mostly in the vocabulary head)."""
    longest = max(len(ids) for ids in preprocessor.tokenizer.tokenize(captions))
    return min(preprocessor.sequence_length, -(-(longest + 3) // 4) * 4)


def tidy(caption):
    """Glues the detokenizer's spaced punctuation back: "a , b ." -> "a, b."."""
    return re.sub(r" ([,.:;!?])", r"\1", caption).strip()


def words_in_place(made, truth):
    """Fraction of word positions where the two captions agree."""
    made, truth = made.split(), truth.split()
    return sum(a == b for a, b in zip(made, truth)) / max(len(made), len(truth), 1)


def pretrain(
    preset=DEFAULT_PRESET,
    dataset=None,
    stages=DEFAULT_STAGES,
    keep_ratio=None,
    output_dir="runs/ov2_pretrain",
    seed=0,
    caption_field="short_caption",
    learning_rate=5e-4,
    sequence_length=None,
    log_every=None,
    num_samples=4,
    augment=None,
    num_workers=0,
    print_fn=None,
    mesh=None,
    layout=None,
    checkpoint_dir=None,
    checkpoint_every=None,
    keep_checkpoints=3,
    callbacks=(),
):
    """Pretrains a captioner preset stage by stage, saves it to `output_dir`.

    `dataset`: a random-access source of raw records (see
    `keras_ov2.data.decode`: "image" as encoded bytes or a uint8 array, and
    `caption_field`); None uses the built-in `SyntheticScenes`,
    whose held-out scenes (`held_out()`) give the before/after loss and the
    sample captions; any other source's last HELD_OUT_SIZE records do, set
    aside before training and never trained on (`split_held_out`).
    `caption_field`: "short_caption" by default (a tiny model learns it in
    minutes; "caption" is the long, detailed one).
    `sequence_length`: None fits it to the captions (see `fitted_length`).
    `augment`: the authors' Inception crop + colour jitter; None turns it on
    except for the synthetic scenes, whose captions state colours and
    positions that jitter and crops would make false. `keep_ratio`: the
    fraction of patch tokens the decoder sees; None keeps the authors' 0.35,
    except on the synthetic scenes, where it keeps them all: a demo scene at
    84 px has 36 tokens, a random 35% of them rarely shows an object whole,
    and the tiny captioner then leaves shapes at chance for far longer than
    a demo lasts (see the README). `num_workers`: Grain
    worker processes for decoding and augmentation.

    `mesh` and `layout`: train on several devices (see `setup_training`):
    the captioner is built in the distribution's scope and each host reads
    its shard; a stage's `batch_size` is then the global batch.
    `checkpoint_dir`: save there every `checkpoint_every` steps and at the
    end of each stage, keeping the last `keep_checkpoints` (see
    `keras_ov2.training.checkpoint`), and resume from the latest checkpoint
    found there: weights, optimizer, stage, step, data order and masking
    randomness, so the run goes on as if never stopped. `callbacks`: more
    Keras callbacks for every stage's `fit`.

    Returns a dict: "losses" [(stage, step, loss)], "loss_before",
    "loss_after", "output_dir", "samples" [(generated, truth)], "exact_match"
    (fraction of the held-out batch captioned exactly right), "words_in_place"
    (see `words_in_place`), "attribute_accuracy" (on the built-in scenes:
    count, colour, shape and size right, see `scene_caption_accuracy`;
    else None), "seconds".
    """
    print_fn = print_fn or functools.partial(print, flush=True)
    stages = [s if isinstance(s, Stage) else Stage(*s) for s in stages]
    if not stages:
        raise ValueError("pretrain needs at least one Stage.")
    started, final_size = time.perf_counter(), stages[-1].image_size
    if dataset is None:
        dataset = SyntheticScenes(100_000, image_size=max(s.image_size for s in stages), seed=seed)
    if hasattr(dataset, "held_out"):  # scenes of the same kind, never in `dataset`
        held_out = dataset.held_out(HELD_OUT_SIZE)
    else:
        dataset, held_out = split_held_out(dataset, HELD_OUT_SIZE)
        print_fn(f"Held out: the last {len(held_out)} of {len(dataset) + len(held_out)} "
                 "records, never trained on.")
    if augment is None:
        augment = not isinstance(dataset, SyntheticScenes)
    if keep_ratio is None:
        keep_ratio = 1.0 if isinstance(dataset, SyntheticScenes) else AUTHORS_KEEP_RATIO
    images, truths, held_out_records = held_out_pairs(held_out, caption_field, final_size)

    keras.utils.set_random_seed(seed)
    setup = setup_training(preset, mesh, layout, keep_ratio=keep_ratio)
    # Keras lays out variables (metrics' too) when it creates them, and fit,
    # evaluate and generate split batches: all inside the distribution.
    with setup.scope():
        captioner = setup.captioner
        if captioner.preprocessor is None:
            raise ValueError(f"Preset {preset!r} has no preprocessor; pretraining needs one.")
        if sequence_length is None:
            sample = truths + known_captions(dataset, caption_field, 256)
            sequence_length = fitted_length(captioner.preprocessor, sample)
        captioner.preprocessor.sequence_length = sequence_length

        captioner.compile(learning_rate=learning_rate, total_steps=1)
        loss_before = held_out_loss(captioner, images, truths)
        print_fn(f"Held-out loss before training: {loss_before:.3f}")
        run = dict(stages=[dataclasses.asdict(s) for s in stages], seed=seed, keep_ratio=keep_ratio,
                   caption_field=caption_field, learning_rate=learning_rate,
                   sequence_length=sequence_length, augment=augment, dataset_size=len(dataset))
        checkpoints = RunCheckpoints(checkpoint_dir, checkpoint_every, run,
                                     [s.steps for s in stages], keep_checkpoints, print_fn)
        resumed = checkpoints.resume(captioner)
        if resumed:
            print_fn(f"Resumed from {resumed}: stage {checkpoints.stage + 1}, step "
                     f"{checkpoints.stage_step}/{stages[checkpoints.stage].steps}")
        losses = list(checkpoints.losses)
        for index, stage in enumerate(stages):
            label = f"[stage {index + 1}/{len(stages)}, {stage.image_size} px]"
            done = checkpoints.steps_done(index)
            if done == stage.steps:
                print_fn(f"{label} trained before the checkpoint")
                continue
            lr = stage.learning_rate or learning_rate
            print_fn(f"{label} {stage.steps} steps of {stage.batch_size} images, peak lr "
                     f"{lr:g} after {stage.warmup} warmup steps, keep ratio {keep_ratio:g}, "
                     f"captions: {caption_field!r} ({sequence_length} tokens)")
            captioner.start_stage(stage.image_size, total_steps=stage.steps,
                                  learning_rate=lr, warmup_steps=stage.warmup)
            every = log_every or max(1, stage.steps // 12)
            progress = Progress(label, stage.steps, stage.batch_size, every, print_fn, done)
            ds = setup.dataset(dataset, stage.image_size, stage.batch_size, caption_field,
                               seed=seed + index, augment_images=augment, num_workers=num_workers)
            with warnings.catch_warnings():  # the pooled output's norm is unused here
                warnings.filterwarnings("ignore", "Gradients do not exist for variables")
                batches = checkpoints.start_stage(index, captioner, ds)
                saving = checkpoints.callback(index, batches, lambda: losses + [
                    (index, *item) for item in progress.history])
                captioner.fit(batches, steps_per_epoch=stage.steps - done, epochs=1, verbose=0,
                              callbacks=[progress, *filter(None, [saving]), *callbacks],
                              shuffle=False)  # Grain shuffles
            losses += [(index, step, loss) for step, loss in progress.history]
            if ds.skipped.total:
                print_fn(f"{label} bad records {ds.skipped.summary()}")
        loss_after = held_out_loss(captioner, images, truths)
        print_fn(f"Held-out loss: {loss_before:.3f} -> {loss_after:.3f}")

        output_dir = Path(output_dir)
        captioner.compile(learning_rate=learning_rate)  # a fresh optimizer: not saved
        captioner.save_to_preset(str(output_dir))
        generated = [tidy(c) for c in captioner.generate(
            images, max_length=captioner.preprocessor.sequence_length)]
        exact = float(np.mean([g == t for g, t in zip(generated, truths)]))
        words = float(np.mean([words_in_place(g, t) for g, t in zip(generated, truths)]))
        samples = list(zip(generated, truths))[:num_samples]
        print_fn("Held-out captions (generated | true):")
        for made, truth in samples:
            print_fn(f"  {'ok ' if made == truth else '   '} {made} | {truth}")
        print_fn(f"Exactly right: {exact:.0%} of {len(truths)} held-out images; words in "
                 f"place: {words:.0%}.")
        attributes = None
        if isinstance(held_out, SyntheticScenes):
            attributes = scene_caption_accuracy(generated, held_out_records,
                                                sizes=caption_field == "caption")
            print_fn(f"Right per object, left to right: {describe_accuracy(attributes)}.")
        result = dict(losses=losses, loss_before=loss_before, loss_after=loss_after,
                      output_dir=str(output_dir), samples=samples, exact_match=exact,
                      words_in_place=words, attribute_accuracy=attributes,
                      seconds=time.perf_counter() - started)
        (output_dir / "pretrain_log.json").write_text(json.dumps(result, indent=2))
        print_fn(f"Saved the captioner preset to {output_dir} ({result['seconds']:.0f} s).")
        return result
