"""Train step with the caption loss fused into the vocabulary head, against
the plain logits path, for OpenVision 2 and OpenVision (v1).

The plain path builds float32 logits (batch, T, vocabulary) and the loss
makes more vocabulary-sized copies of them; the fused path
(`chunked_caption_loss`, what `compile()` sets up by default for both
`OpenVision2Captioner` and `OpenVisionCLIPS`, see `FusedCaptionHead`) goes
through the tokens in chunks and recomputes each chunk's logits in the
backward pass. This script times one train step of the shipped tiny
captioner and of the tiny OV1 model (its caption decoder's targets are its
`num_queries` positions; the contrastive part is the same either way) both
ways, in one process, on the current Keras backend, and on JAX also reports
XLA's peak memory of the compiled step (see step_measure.py); ratios are to
the same model's plain path:

    python benchmarks/caption_loss.py
    python benchmarks/caption_loss.py --models ov1 --batch-size 8
    KERAS_BACKEND=torch python benchmarks/caption_loss.py --steps 3

Time: median and fastest of `--steps` steps after one warmup step. The
two losses agree: the same weights, batch and updates, two computations.
"""

import argparse
import statistics

from step_measure import caption_batch
from step_measure import cell
from step_measure import load_average
from step_measure import machine
from step_measure import ov1_batch
from step_measure import print_columns
from step_measure import ratio_cells
from step_measure import timed


MODELS = ("ov2", "ov1")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", default="ov2,ov1", help="of %s (default %%(default)s)" % (MODELS,)
    )
    parser.add_argument("--preset", default="openvision2_captioner_tiny_patch14_84")
    parser.add_argument("--ov1-preset", default="openvision_clips_tiny_patch14_84")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument(
        "--seq-len",
        type=int,
        default=64,
        help="OV2 caption length; OV1's is its decoder's num_queries (default %(default)s)",
    )
    parser.add_argument(
        "--chunk-size", type=int, help="tokens per chunk (default: CaptionLoss's)"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default %(default)s)")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: choose from {MODELS}; received {unknown or 'none'}.")
    return args


def model_and_batch(args, name):
    """The model `name` of `MODELS` (random weights unless its preset has
    some, no preprocessor) and a (x, y, sample_weight) batch of model inputs."""
    from keras_ov2.models import OpenVisionCLIPS
    from keras_ov2.training import load_captioner

    if name == "ov1":
        model = OpenVisionCLIPS.from_preset(args.ov1_preset, load_weights=False)
        batch = ov1_batch(model, args.batch_size, args.image_size)
    else:
        model = load_captioner(args.preset)
        batch = caption_batch(
            args.batch_size, args.image_size, args.seq_len, model.decoder.vocabulary_size
        )
    model.preprocessor = None  # the batch is model inputs already
    return model, batch


def measure(args, name, fused):
    """Figures of a train step of model `name`, on the fused or plain path."""
    import keras

    from keras_ov2.models import CaptionLoss

    keras.utils.set_random_seed(0)
    model, batch = model_and_batch(args, name)
    chunk_size = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    # The model's own recipe loss (its weight), with the path's chunk size.
    loss = model.recipe_loss()
    loss = CaptionLoss(weight=loss.weight, **(chunk_size if fused else {"chunk_size": None}))
    model.compile(loss=loss, learning_rate=1e-4, total_steps=1000)
    assert (model.fused_loss is not None) == fused
    if keras.backend.backend() == "jax":
        from step_measure import measure_train_step

        return measure_train_step(model, *batch, args.steps)
    model.train_on_batch(*batch)  # builds, compiles, warms up
    losses = []
    times = timed(
        lambda: losses.append(float(model.train_on_batch(*batch, return_dict=True)["loss"])),
        args.steps,
    )
    return {
        "step_s": statistics.median(times),
        "min_step_s": min(times),
        "loss": losses[-1],
        "peak_mb": None,
        "temp_mb": None,
    }


def main():
    import keras

    args = parse_args()
    results = {
        (name, path): measure(args, name, fused=path == "fused")
        for name in args.models
        for path in ("plain", "fused")
    }
    print(f"machine:  {machine()}; load average {load_average()}")
    print(f"backend:  {keras.backend.backend()}, keras {keras.__version__}")
    inputs = {
        "ov2": f"{args.preset}, caption length {args.seq_len}",
        "ov1": f"{args.ov1_preset}, its decoder's caption length",
    }
    for name in args.models:
        print(f"{name + ':':9} {inputs[name]}")
    print(f"input:    batch {args.batch_size}, {args.image_size} px; median / min of "
          f"{args.steps} steps after 1 warmup")
    print()
    print_columns([
        {
            "model": name,
            "path": path,
            "step_ms": cell(r["step_s"] * 1e3),
            "min_ms": cell(r["min_step_s"] * 1e3),
            "peak_MB": cell(r["peak_mb"]),
            "temp_MB": cell(r["temp_mb"]),
            **ratio_cells(r, results[name, "plain"], "plain"),
            "loss": f"{r['loss']:.5f}",
        }
        for (name, path), r in results.items()
    ])


if __name__ == "__main__":
    main()
