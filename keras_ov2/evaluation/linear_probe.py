"""A linear classifier on frozen features: the standard measure of what an
encoder's features hold.

Features are standardized with the training statistics; the classifier is a
multinomial logistic regression (single-label) or one logistic regression per
label (multi-label, multi-hot targets), with an L2 penalty, fitted full-batch
by SciPy's L-BFGS-B in float64 from zero weights: deterministic, no tuning of
a learning rate, seconds on a CPU for thousands of examples and features. The
penalty is chosen on a held-out fifth of the training set, then the probe is
refitted on all of it. For a single-label task this is scikit-learn's
`LogisticRegression(C=1 / (l2 * N))` (tests/test_evaluation.py checks it).
"""

import numpy as np
import scipy.optimize
from threadpoolctl import threadpool_limits

L2_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)  # strongest first: ties keep the simpler probe
MAX_ITERATIONS = 500
GRADIENT_TOLERANCE = 1e-6  # stop when the largest gradient entry is below it
RELATIVE_TOLERANCE = 1e-9  # or when a step lowers the loss by less than this fraction
VALIDATION_FRACTION = 0.2
DEFAULT_L2 = 1e-2  # when the training set is too small to hold some out


def _log_softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def _objective(x, targets, l2, multi_label):
    """(loss, gradient) of the mean cross-entropy + l2/2 |W|^2 (bias free of
    the penalty) as a function of the flat parameters [W; b]."""
    n, d = x.shape
    k = targets.shape[1]

    def fun(flat):
        params = flat.reshape(d + 1, k)
        logits = x @ params[:-1] + params[-1]
        if multi_label:  # sigmoid cross-entropy, summed over labels
            loss = np.sum(np.logaddexp(0.0, logits) - targets * logits) / n
            error = 1.0 / (1.0 + np.exp(-logits)) - targets
        else:
            log_p = _log_softmax(logits)
            loss = -np.sum(targets * log_p) / n
            error = np.exp(log_p) - targets
        weights = params[:-1]
        loss += 0.5 * l2 * np.sum(weights**2)
        grad = np.vstack([x.T @ error / n + l2 * weights, error.sum(axis=0) / n])
        return loss, grad.ravel()

    return fun


class LinearProbe:
    """A fitted probe: `predict(features)` -> class indices (N,) or multi-hot (N, K)."""

    def __init__(self, mean, scale, weights, bias, multi_label, l2):
        self.mean, self.scale = mean, scale
        self.weights, self.bias = weights, bias
        self.multi_label, self.l2 = multi_label, l2

    def logits(self, features):
        x = (np.asarray(features, np.float64) - self.mean) / self.scale
        return x @ self.weights + self.bias

    def predict(self, features):
        return _decide(self.logits(features), self.multi_label)


def _decide(logits, multi_label):
    if multi_label:
        return (logits > 0).astype(np.int32)
    return logits.argmax(axis=1).astype(np.int32)


def _targets(labels, num_classes, multi_label):
    if multi_label:
        return np.asarray(labels, np.float64)
    return np.eye(num_classes)[np.asarray(labels)]


def _fit(x, targets, l2, multi_label, start=None):
    """(D + 1, K) parameters: the weights, then the bias row.

    On one BLAS thread: the products are small (N x D by D x K), and waking
    several OpenBLAS threads for each of the hundreds of evaluations cost
    20x the arithmetic on a 2-core machine with the framework's threads
    around (benchmarks/linear_probe.py)."""
    d, k = x.shape[1], targets.shape[1]
    start = np.zeros((d + 1) * k) if start is None else start.ravel()
    with threadpool_limits(limits=1, user_api="blas"):
        result = scipy.optimize.minimize(
            _objective(x, targets, l2, multi_label), start, jac=True, method="L-BFGS-B",
            options=dict(maxiter=MAX_ITERATIONS, gtol=GRADIENT_TOLERANCE,
                         ftol=RELATIVE_TOLERANCE),
        )
    return result.x.reshape(d + 1, k)


def accuracy(predicted, labels):
    """Fraction of examples right; for multi-hot labels, the whole label set."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if labels.ndim == 2:
        return float(np.mean(np.all(predicted == labels, axis=1)))
    return float(np.mean(predicted == labels))


def _select_l2(x, targets, labels, multi_label, seed):
    """The L2_GRID value with the best accuracy on a held-out fifth of the data."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round(len(x) * (1 - VALIDATION_FRACTION)))
    fit, held = order[:cut], order[cut:]
    best, best_accuracy, start = DEFAULT_L2, -1.0, None
    for l2 in L2_GRID:  # warm-started from the previous, stronger penalty
        start = _fit(x[fit], targets[fit], l2, multi_label, start)
        score = accuracy(_decide(x[held] @ start[:-1] + start[-1], multi_label), labels[held])
        if score > best_accuracy:
            best, best_accuracy = l2, score
    return best


def fit_linear_probe(features, labels, num_classes=None, multi_label=False, l2=None, seed=0):
    """Fits a probe on (N, D) features. `labels`: class indices (N,), or
    multi-hot (N, K) with `multi_label`. `l2`: None chooses it from
    `L2_GRID` on a held-out fifth (`seed` draws it)."""
    labels = np.asarray(labels)
    x = np.asarray(features, np.float64)
    if len(x) != len(labels):
        raise ValueError(f"Got {len(x)} feature rows but {len(labels)} labels.")
    if num_classes is None:
        num_classes = labels.shape[1] if multi_label else int(labels.max()) + 1
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    x = (x - mean) / scale
    targets = _targets(labels, num_classes, multi_label)
    if l2 is None:
        l2 = _select_l2(x, targets, labels, multi_label, seed) if len(x) >= 10 else DEFAULT_L2
    params = _fit(x, targets, l2, multi_label)
    return LinearProbe(mean, scale, params[:-1], params[-1], multi_label, l2)


def chance_accuracy(train_labels, test_labels):
    """Accuracy of always guessing the most frequent training label (or label
    set): the level a probe that learnt nothing from the images reaches."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    values, counts = np.unique(train_labels, axis=0, return_counts=True)
    guess = values[np.argmax(counts)]
    return accuracy(np.broadcast_to(guess, test_labels.shape), test_labels)


def probe_accuracy(train_features, train_labels, test_features, test_labels,
                   num_classes=None, multi_label=False, seed=0, l2=None):
    """Fits on the training split, scores the test split: a dict with
    "accuracy", "chance" (see `chance_accuracy`) and the chosen "l2"."""
    probe = fit_linear_probe(train_features, train_labels, num_classes, multi_label, l2, seed)
    return {
        "accuracy": accuracy(probe.predict(test_features), test_labels),
        "chance": chance_accuracy(train_labels, test_labels),
        "l2": probe.l2,
    }
