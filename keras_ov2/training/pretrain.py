"""`pretrain`: OpenVision 2's captioning-only recipe, one resolution stage at a time."""

import dataclasses
import functools
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from keras_ov2.data import SyntheticScenes
from keras_ov2.data import TrainingDefaults
from keras_ov2.data import split_held_out
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import decode_caption
from keras_ov2.models.common.recipe_optimizer import default_warmup_steps
from keras_ov2.training.report import HELD_OUT_SIZE
from keras_ov2.training.report import HeldOutReport
from keras_ov2.training.report import encoder_report
from keras_ov2.training.report import write_log
from keras_ov2.training.resume import RunCheckpoints
from keras_ov2.training.setup import setup_training
from keras_ov2.variants import KEEP_RATIO

DEFAULT_PRESET = "openvision2_captioner_tiny_patch14_84"
# The paper's recipe, for a source that recommends nothing else; and a
# captioner small enough for a laptop, with the authors' vocabulary.
AUTHORS_DEFAULTS = TrainingDefaults("the authors' default", keep_ratio=KEEP_RATIO, augment=True,
                                    caption_field="caption")
DEMO_DEFAULTS = TrainingDefaults("keras_ov2's demo size", preset=DEFAULT_PRESET)
MAX_UNKNOWN = 0.01  # share of [UNK] word-pieces in the captions that stops a run


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


# The demo: 80,000 scenes with the demo's own warmup (5%), with which its
# figures in the README were measured (benchmarks/demo_settings.py): a run
# that, report included, takes under 8 minutes on 2 CPU cores (5 min 36 s).
DEFAULT_STAGES = (Stage(image_size=84, steps=5000, batch_size=16, warmup_steps=250),)
# The demo's scenes hold one or two objects: their detailed captions fit in
# 32 tokens, where three objects need 64: the decoder would hold 12 + 63
# positions instead of 12 + 31.
DEFAULT_SCENES = dict(num_records=100_000, max_objects=2)


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


def check_vocabulary(tokenizer, captions, preset):
    """A ValueError when the preset's tokenizer knows too few of the
    captions' word-pieces: a closed vocabulary (the scenes') met other texts."""
    pieces = np.concatenate([np.asarray(ids).reshape(-1) for ids in tokenizer.tokenize(captions)])
    unknown = float(np.mean(pieces == tokenizer.token_to_id(tokenizer.oov_token)))
    if unknown > MAX_UNKNOWN:
        raise ValueError(
            f"{unknown:.0%} of the captions' word-pieces are unknown to the tokenizer of "
            f"preset {preset!r} ({tokenizer.vocabulary_size()} tokens), which was made for other "
            f"texts. Pretrain on these records with a preset of the authors' vocabulary, e.g. "
            f"--preset {DEFAULT_PRESET}.")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What a run trains and how it reads its data. Each option is the one
    given, else the one the source recommends (its `training_defaults`),
    else the authors' (the demo captioner for `preset`); `origins` names
    which, for the run header."""

    preset: str
    keep_ratio: float
    augment: bool
    caption_field: str
    origins: dict

    @classmethod
    def resolve(cls, source, preset=None, keep_ratio=None, augment=None, caption_field=None):
        """`source`: the records, or their class (its `training_defaults`)."""
        # None: not given.
        given = TrainingDefaults("given", keep_ratio, augment, caption_field, preset)
        layers = [given, getattr(source, "training_defaults", None), AUTHORS_DEFAULTS,
                  DEMO_DEFAULTS]
        chosen = {name: next(d for d in layers if d is not None and getattr(d, name) is not None)
                  for name in ("preset", "keep_ratio", "augment", "caption_field")}
        return cls(**{name: getattr(d, name) for name, d in chosen.items()},
                   origins={name: d.label for name, d in chosen.items()})

    def describe(self):
        """The run header: each option and where it came from."""
        origins = self.origins
        return (f"Captioner: {self.preset} ({origins['preset']}).\n"
                f"Data: keep ratio {self.keep_ratio:g} ({origins['keep_ratio']}), augmentation "
                f"{'on' if self.augment else 'off'} ({origins['augment']}), captions "
                f"{self.caption_field!r} ({origins['caption_field']}).")


def pretrain(
    preset=None,
    dataset=None,
    stages=DEFAULT_STAGES,
    keep_ratio=None,
    output_dir="runs/ov2_pretrain",
    seed=0,
    caption_field=None,
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
    report=True,
):
    """Pretrains a captioner preset stage by stage, saves it to `output_dir`.

    `preset`: a captioner preset name, folder or hub handle; None takes the
    one the source recommends (the built-in scenes: the demo captioner with
    a vocabulary of their words), else `DEFAULT_PRESET`.

    `dataset`: a random-access source of raw records (see
    `keras_ov2.data.decode`: "image" as encoded bytes or a uint8 array, and
    `caption_field`); None uses the built-in `SyntheticScenes` (of one or two
    objects, `DEFAULT_SCENES`). The run is
    measured on HELD_OUT_SIZE records it never trains on (see
    `split_held_out` and `keras_ov2.training.report`).
    `keep_ratio` (the fraction of patch tokens the decoder sees), `augment`
    (the authors' Inception crop + colour jitter) and `caption_field`: None
    takes what the source recommends (its `training_defaults`, see
    `keras_ov2.data.TrainingDefaults`; the built-in scenes recommend no
    augmentation and their detailed captions), else the authors' 0.35, on
    and "caption". The run header says which applied.
    `sequence_length`: None fits it to the captions (see `fitted_length`).
    `num_workers`: Grain worker processes for decoding and augmentation.

    `mesh` and `layout`: train on several devices (see `setup_training`):
    the captioner is built in the distribution's scope and each host reads
    its shard; a stage's `batch_size` is then the global batch.
    `checkpoint_dir`: save there every `checkpoint_every` steps and at the
    end of each stage, keeping the last `keep_checkpoints` (see
    `keras_ov2.training.checkpoint`), and resume from the latest checkpoint
    found there: weights, optimizer, stage, step, data order and masking
    randomness, so the run goes on as if never stopped. `callbacks`: more
    Keras callbacks for every stage's `fit`. `report=False` skips measuring
    the run (held-out losses, generated captions, encoder probes: minutes on
    a CPU), for runs that only want the weights.

    Returns a dict: "losses" [(stage, step, loss)], "keep_ratio" and
    "caption_field" (as applied), "loss_before", "loss_after", "samples"
    [(generated, truth)], "view" (the tokens the captions were generated
    from: the training-time view for a masked captioner, see
    `report.training_view`), "exact_match" (fraction of the held-out batch
    captioned exactly right), "words_in_place" (see
    `report.words_in_place`), "attribute_accuracy" (count, colour, shape and
    size right, where the records carry the built-in scenes' ground truth,
    see `scene_caption_accuracy`; else None) and, for a masked captioner,
    "attribute_accuracy_all_tokens" (the same from every token);
    "encoder_probes" on the built-in scenes (linear probes of the encoder
    against a random one, see `report.encoder_report`); "output_dir",
    "seconds". Without a report, only "losses", "keep_ratio",
    "caption_field", "output_dir" and "seconds".
    """
    print_fn = print_fn or functools.partial(print, flush=True)
    started = time.perf_counter()
    stages = [s if isinstance(s, Stage) else Stage(*s) for s in stages]
    if not stages:
        raise ValueError("pretrain needs at least one Stage.")
    if dataset is None:
        dataset = SyntheticScenes(image_size=max(s.image_size for s in stages), seed=seed,
                                  **DEFAULT_SCENES)
    data = RunOptions.resolve(dataset, preset, keep_ratio, augment, caption_field)
    preset = data.preset
    for line in data.describe().splitlines():
        print_fn(line)
    training, held_out = split_held_out(dataset, HELD_OUT_SIZE)
    if len(training) < len(dataset):
        print_fn(f"Held out: the last {len(held_out)} of {len(dataset)} records, never trained on.")
    measures = HeldOutReport(held_out, data.caption_field, stages[-1].image_size, num_samples,
                             print_fn)

    keras.utils.set_random_seed(seed)
    setup = setup_training(preset, mesh, layout, keep_ratio=data.keep_ratio)
    # Keras lays out variables (metrics' too) when it creates them, and fit,
    # evaluate and generate split batches: all inside the distribution.
    with setup.scope():
        captioner = setup.captioner
        if captioner.preprocessor is None:
            raise ValueError(f"Preset {preset!r} has no preprocessor; pretraining needs one.")
        sample = measures.held_out.captions + known_captions(training, data.caption_field, 256)
        check_vocabulary(captioner.preprocessor.tokenizer, sample, preset)
        if sequence_length is None:
            sequence_length = fitted_length(captioner.preprocessor, sample)
        captioner.preprocessor.sequence_length = sequence_length

        captioner.compile(learning_rate=learning_rate, total_steps=1)
        if report:
            measures.before(captioner)
        run = dict(stages=[dataclasses.asdict(s) for s in stages], seed=seed,
                   keep_ratio=data.keep_ratio, caption_field=data.caption_field,
                   learning_rate=learning_rate, sequence_length=sequence_length,
                   augment=data.augment, dataset_size=len(training))
        checkpoints = RunCheckpoints(checkpoint_dir, checkpoint_every, run,
                                     [s.steps for s in stages], keep_checkpoints, print_fn,
                                     data_shards=setup.data_shard()[1])
        try:
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
                print_fn(f"{label} {stage.steps} steps of {stage.batch_size} images, peak "
                         f"lr {lr:g} after {stage.warmup} warmup steps, keep ratio "
                         f"{data.keep_ratio:g}, captions: {data.caption_field!r} "
                         f"({sequence_length} tokens)")
                captioner.start_stage(stage.image_size, total_steps=stage.steps,
                                      learning_rate=lr, warmup_steps=stage.warmup)
                every = log_every or max(1, stage.steps // 12)
                progress = Progress(label, stage.steps, stage.batch_size, every, print_fn, done)
                ds = setup.dataset(training, stage.image_size, stage.batch_size,
                                   data.caption_field, seed=seed + index,
                                   augment_images=data.augment, num_workers=num_workers)
                with warnings.catch_warnings():  # the pooled output's norm is unused here
                    warnings.filterwarnings("ignore", "Gradients do not exist for variables")
                    batches = checkpoints.start_stage(index, captioner, ds)
                    saving = checkpoints.callback(index, batches, lambda: losses + [
                        (index, *item) for item in progress.history])
                    captioner.fit(batches, steps_per_epoch=stage.steps - done, epochs=1,
                                  verbose=0, shuffle=False,  # Grain shuffles
                                  callbacks=[progress, *filter(None, [saving]), *callbacks])
                losses += [(index, step, loss) for step, loss in progress.history]
                if ds.skipped.total:
                    print_fn(f"{label} bad records {ds.skipped.summary()}")
        finally:
            checkpoints.close()  # the last saves are written in the background
        measured = measures.after(captioner) if report else {}
        if report and isinstance(dataset, SyntheticScenes):  # the only source with probe labels
            measured["encoder_probes"] = encoder_report(captioner, dataset, seed, print_fn)
        output_dir = Path(output_dir)
        captioner.compile(learning_rate=learning_rate)  # a fresh optimizer: not saved
        captioner.save_to_preset(str(output_dir))
    result = dict(losses=losses, keep_ratio=data.keep_ratio, caption_field=data.caption_field,
                  **measured, output_dir=str(output_dir), seconds=time.perf_counter() - started)
    write_log(result, print_fn)
    return result
