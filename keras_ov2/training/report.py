"""What `pretrain` reports: the held-out loss before and after training, the
held-out captions the trained captioner writes and how right they are, and
the run's log file."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from keras_ov2.data.augment import resize
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import check_record
from keras_ov2.evaluation.scene_captions import describe_accuracy
from keras_ov2.evaluation.scene_captions import scene_caption_accuracy

HELD_OUT_SIZE = 64  # held-out records for the before/after loss and the caption accuracy
# A masked captioner captions each held-out image from this many random views
# of its tokens, drawn as in training, and keeps the likeliest caption.
MASKED_VIEW_DRAWS = 8
LOG = "pretrain_log.json"


def tidy(caption):
    """Glues the detokenizer's spaced punctuation back: "a , b ." -> "a, b."."""
    return re.sub(r" ([,.:;!?])", r"\1", caption).strip()


def words_in_place(made, truth):
    """Fraction of word positions where the two captions agree."""
    made, truth = made.split(), truth.split()
    return sum(a == b for a, b in zip(made, truth)) / max(len(made), len(truth), 1)


def has_scene_truth(records):
    """Whether the records carry the built-in scenes' ground truth, from
    which the objects a caption names can be checked one by one."""
    return all(isinstance(r.get("objects"), dict)
               and {"colour", "shape", "size"} <= r["objects"].keys() for r in records)


@dataclasses.dataclass
class HeldOut:
    """The held-out batch a run is measured on: images (at the last stage's
    size), their true captions and the records they come from."""

    images: np.ndarray
    captions: list
    records: list

    @classmethod
    def read(cls, source, caption_field, image_size):
        """Up to HELD_OUT_SIZE good records among the first of `source`. The
        search is bounded, so that a caption field no record has fails at
        once (KeyError) instead of reading a whole corpus."""
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
        return cls(np.stack(images), captions, records)

    def loss(self, captioner):
        """Mean caption loss (as in training, weight included, no token masking)."""
        captioner.preprocessor.image_converter.image_size = self.images.shape[1:3]
        logs = captioner.evaluate(self.images, np.array(self.captions),
                                  batch_size=len(self.images), verbose=0, return_dict=True)
        return float(logs["loss"])


def caption_report(generated, held_out, caption_field, num_samples, view="every token"):
    """Scores of the captions `generated` for `held_out`, and the lines that
    say them: ({"samples", "exact_match", "words_in_place",
    "attribute_accuracy", "view"}, lines). Attribute accuracy needs the
    scenes' ground truth in the records (see `has_scene_truth`); else it is
    None. `view` says which tokens the decoder saw."""
    truths = held_out.captions
    scores = dict(
        view=view,
        samples=list(zip(generated, truths))[:num_samples],
        exact_match=float(np.mean([g == t for g, t in zip(generated, truths)])),
        words_in_place=float(np.mean([words_in_place(g, t) for g, t in zip(generated, truths)])),
        attribute_accuracy=None,
    )
    lines = [f"Held-out captions from {view} (generated | true):"]
    lines += [f"  {'ok ' if made == truth else '   '} {made} | {truth}"
              for made, truth in scores["samples"]]
    lines.append(f"Exactly right: {scores['exact_match']:.0%} of {len(truths)} held-out "
                 f"images; words in place: {scores['words_in_place']:.0%}.")
    if has_scene_truth(held_out.records):
        scores["attribute_accuracy"] = accuracy = scene_caption_accuracy(
            generated, held_out.records, sizes=caption_field == "caption")
        lines.append(f"Right per object, left to right: {describe_accuracy(accuracy)}.")
    return scores, lines


class HeldOutReport:
    """Measures a run on records it never trains on: the loss before
    training (`before`), then the loss and the captions after (`after`)."""

    def __init__(self, source, caption_field, image_size, num_samples, print_fn):
        self.held_out = HeldOut.read(source, caption_field, image_size)
        self.caption_field, self.num_samples, self.print_fn = caption_field, num_samples, print_fn
        self.loss_before = None

    def before(self, captioner):
        self.loss_before = self.held_out.loss(captioner)
        self.print_fn(f"Held-out loss before training: {self.loss_before:.3f}")

    def after(self, captioner):
        """The loss before and after, the sample captions and their scores (a
        dict). A captioner trained on part of its tokens captions from views
        drawn as in training (see `training_view`); the scores from every
        token, the view it never trained on, come beside them
        ("attribute_accuracy_all_tokens")."""
        loss_after = self.held_out.loss(captioner)
        self.print_fn(f"Held-out loss: {self.loss_before:.3f} -> {loss_after:.3f}")
        view, options = training_view(captioner, self.held_out.images)
        scores, lines = caption_report(self.captions(captioner, **options), self.held_out,
                                       self.caption_field, self.num_samples, view)
        if options:
            everything, _ = caption_report(self.captions(captioner), self.held_out,
                                           self.caption_field, 0)
            scores["attribute_accuracy_all_tokens"] = everything["attribute_accuracy"]
            if everything["attribute_accuracy"] is not None:
                lines.append("From every token (a view never trained on): "
                             f"{describe_accuracy(everything['attribute_accuracy'])}.")
        for line in lines:
            self.print_fn(line)
        return dict(loss_before=self.loss_before, loss_after=loss_after, **scores)

    def captions(self, captioner, **view):
        return [tidy(c) for c in captioner.generate(
            self.held_out.images, max_length=captioner.preprocessor.sequence_length, **view)]


def training_view(captioner, images):
    """How a captioner should be shown `images` to be judged as it trained:
    ("every token", {}) when it kept them all, else the masked view's
    description and `generate` options (MASKED_VIEW_DRAWS draws, seed 0)."""
    if captioner.keep_ratio >= 1:
        return "every token", {}
    tokens = captioner.num_patch_tokens(images)
    kept = captioner.token_masking.kept_count(tokens)
    view = (f"the training-time view ({kept} of {tokens} tokens, likeliest of "
            f"{MASKED_VIEW_DRAWS} draws)")
    return view, dict(view="masked", draws=MASKED_VIEW_DRAWS, seed=0)


def write_log(result, print_fn):
    """Writes `result` into its "output_dir", beside the saved preset."""
    (Path(result["output_dir"]) / LOG).write_text(json.dumps(result, indent=2))
    print_fn(f"Saved the captioner preset to {result['output_dir']} ({result['seconds']:.0f} s).")


# The encoder probe: scenes to fit the linear probes on (pretraining images)
# and to test them on (the scenes' held-out stream), and one penalty for all
# (choosing it per task takes 6 fits instead of 1): under a minute. Only
# two-object scenes have a pair relation, so at 512 + 256 scenes its
# accuracy was within the noise of a 128-scene test (+-4 points).
PROBE_TRAIN, PROBE_TEST, PROBE_L2 = 2048, 512, 1e-2


def encoder_report(captioner, scenes, seed, print_fn):
    """Linear-probe accuracy of the pretrained encoder against a randomly
    initialised one of the same architecture, on the built-in scenes'
    attributes (`keras_ov2.evaluation.synthetic_eval_set`): what pretraining
    put into the encoder itself, whatever the decoder makes of it. Returns
    {task: {"pretrained", "random", "chance"}}."""
    import keras

    from keras_ov2.evaluation import probe_results
    from keras_ov2.evaluation import synthetic_eval_set
    from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone

    eval_set = synthetic_eval_set(min(PROBE_TRAIN, len(scenes)), PROBE_TEST, scenes=scenes)
    keras.utils.set_random_seed(seed)
    random = OpenVision2Backbone.from_config(captioner.backbone.get_config())
    rows = {"pretrained": probe_results(eval_set, captioner.backbone, seed=seed, l2=PROBE_L2),
            "random": probe_results(eval_set, random, seed=seed, l2=PROBE_L2)}
    table = {row["task"]: {"chance": row["chance"]} for row in rows["random"]}
    for encoder, results in rows.items():
        for row in results:
            table[row["task"]][encoder] = row["accuracy"]
    print_fn(f"Linear probes on the encoder ({len(eval_set.train_images)} training scenes, "
             f"{PROBE_TEST} held-out; pooled + 2 x 2 grid features, l2 {PROBE_L2:g}), "
             "pretrained | random | chance:")
    for task, row in table.items():
        print_fn(f"  {task:<14} {row['pretrained']:6.0%} {row['random']:6.0%} "
                 f"{row['chance']:6.0%}")
    return table
