"""How fast the linear probes fit: on one BLAS thread (what
`keras_ov2.evaluation.linear_probe` does) against the BLAS library's default
thread count, on the same features, in one run.

The features are a random tiny encoder's (pooled + 2 x 2 grid, 640 wide) on
the built-in scenes, extracted through JAX first, as `ov2 eval` and
`pretrain`'s report do, so that the framework's threads are there too. Every
task's probe is fitted as `probe_accuracy` fits it (the penalty chosen on a
held-out fifth: 6 L-BFGS-B fits); the test accuracies must agree.

    python benchmarks/linear_probe.py              # 300 + 100 scenes: about a minute
    python benchmarks/linear_probe.py --train 2048 --test 512
"""

import argparse
import os
import time

from step_measure import machine

os.environ.setdefault("KERAS_BACKEND", "jax")


def fit_all(eval_set, train, test):
    """{task: (seconds, accuracy)} for every task's probe."""
    from keras_ov2.evaluation.linear_probe import probe_accuracy

    results = {}
    for task in eval_set.tasks:
        fit, held = task.rows(task.train_labels), task.rows(task.test_labels)
        if not len(fit) or not len(held):
            continue
        start = time.perf_counter()
        result = probe_accuracy(train[fit], task.train_labels[fit], test[held],
                                task.test_labels[held], len(task.classes), task.multi_label)
        results[task.name] = (time.perf_counter() - start, result["accuracy"])
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args()

    import keras
    from threadpoolctl import threadpool_info

    import keras_ov2
    from keras_ov2.evaluation import linear_probe
    from keras_ov2.evaluation import synthetic_eval_set
    from keras_ov2.evaluation.features import extract_features
    from keras_ov2.evaluation.features import select_features

    print(machine())
    keras.utils.set_random_seed(0)
    encoder = keras_ov2.OpenVision2Backbone.from_preset("openvision2_captioner_scenes_patch14_84",
                                                        load_weights=False)
    eval_set = synthetic_eval_set(args.train, args.test, image_size=84, seed=0)
    train, test = (select_features(extract_features(encoder, images), "both")
                   for images in (eval_set.train_images, eval_set.test_images))
    blas = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"features: {train.shape[1]} wide, {len(train)} train, {len(test)} test; "
          f"BLAS libraries and default threads: {blas}")

    one = fit_all(eval_set, train, test)
    limit = linear_probe.threadpool_limits
    linear_probe.threadpool_limits = lambda **kwargs: limit(limits=None)  # the default
    try:
        default = fit_all(eval_set, train, test)
    finally:
        linear_probe.threadpool_limits = limit

    print(f"\n{'task':14} {'1 thread s':>11} {'default s':>10} {'ratio':>6} {'accuracy':>17}")
    for task, (seconds, accuracy) in one.items():
        other_seconds, other_accuracy = default[task]
        print(f"{task:14} {seconds:11.2f} {other_seconds:10.2f} {other_seconds / seconds:6.1f}"
              f" {accuracy:8.3f} {other_accuracy:8.3f}")
    total_one = sum(s for s, _ in one.values())
    total_default = sum(s for s, _ in default.values())
    print(f"{'all':14} {total_one:11.2f} {total_default:10.2f} "
          f"{total_default / total_one:6.1f}")


if __name__ == "__main__":
    main()
