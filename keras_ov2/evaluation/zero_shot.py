"""Zero-shot classification by caption scoring.

A caption-only model has no text encoder to embed class names with (the CLIP
recipe); it can still classify by asking which caption it finds most likely:
each image is scored against every prompt of every class with the
captioner's `score` (log-likelihood of the text given the image), a class
scores the log of the summed likelihoods of its prompts (logsumexp), and the
best class wins.
"""

import numpy as np


def class_scores(scorer, images, prompts, batch_size=32):
    """(N, K) class log-likelihoods. `scorer.score(images, texts, batch_size)`
    gives the log-likelihood of each text given its image (an
    `OpenVision2Captioner` does); `prompts[i][k]` is the list of prompts of
    class k for image i (per image, so that prompts can be captions of that
    very scene)."""
    num_classes = len(prompts[0])
    scores = np.empty((len(images), num_classes))
    per_image = sum(len(p) for p in prompts[0])
    chunk = max(1, 8 * batch_size // max(1, per_image))  # ~8 score batches per call
    for start in range(0, len(images), chunk):
        indices = range(start, min(start + chunk, len(images)))
        rows, texts = [], []
        for i in indices:
            if len(prompts[i]) != num_classes or not all(prompts[i]):
                raise ValueError(
                    f"Image {i} needs at least one prompt for each of {num_classes} "
                    f"classes; got {prompts[i]!r}."
                )
            for class_texts in prompts[i]:
                rows += [i] * len(class_texts)
                texts += list(class_texts)
        # Full batches only: eager JAX compiles every op anew for each batch shape.
        padding = -len(texts) % batch_size
        rows, texts = rows + rows[-1:] * padding, texts + texts[-1:] * padding
        likelihoods = np.asarray(scorer.score(images[rows], texts, batch_size=batch_size))
        position = 0
        for i in indices:
            for k, class_texts in enumerate(prompts[i]):
                end = position + len(class_texts)
                scores[i, k] = np.logaddexp.reduce(likelihoods[position:end])
                position = end
    return scores


def zero_shot_predict(scorer, images, prompts, batch_size=32):
    """(N,) predicted class indices: the argmax of `class_scores`."""
    return class_scores(scorer, np.asarray(images), prompts, batch_size).argmax(axis=1)
