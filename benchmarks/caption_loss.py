"""Train step with the caption loss fused into the vocabulary head, against
the plain logits path.

The plain path builds float32 logits (batch, T, vocabulary) and the loss
makes more vocabulary-sized copies of them; the fused path
(`chunked_caption_loss`, what `compile()` sets up by default) goes through
the tokens in chunks and recomputes each chunk's logits in the backward
pass. This script times one train step of the shipped tiny captioner both
ways, in one process, on the current Keras backend, and on JAX also
reports XLA's peak memory of the compiled step (see step_measure.py):

    python benchmarks/caption_loss.py
    KERAS_BACKEND=torch python benchmarks/caption_loss.py --steps 3

Time: median and fastest of `--steps` steps after one warmup step. The
two losses agree: the same weights, batch and updates, two computations.
"""

import argparse
import statistics

from step_measure import caption_batch
from step_measure import cell
from step_measure import machine
from step_measure import print_columns
from step_measure import ratio_cells
from step_measure import timed


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="openvision2_captioner_tiny_patch14_84")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument(
        "--seq-len", type=int, default=64, help="caption length (default %(default)s)"
    )
    parser.add_argument(
        "--chunk-size", type=int, help="tokens per chunk (default: CaptionLoss's)"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default %(default)s)")
    return parser.parse_args()


def measure(args, fused):
    """Figures of a train step of the preset, on the fused or plain path."""
    import keras

    from keras_ov2.models import CaptionLoss
    from keras_ov2.training import load_captioner

    keras.utils.set_random_seed(0)
    captioner = load_captioner(args.preset)
    captioner.preprocessor = None  # the batch below is model inputs already
    chunk_size = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    loss = CaptionLoss(**chunk_size) if fused else CaptionLoss(chunk_size=None)
    captioner.compile(loss=loss, learning_rate=1e-4, total_steps=1000)
    assert (captioner.fused_loss is not None) == fused
    batch = caption_batch(
        args.batch_size, args.image_size, args.seq_len, captioner.decoder.vocabulary_size
    )
    if keras.backend.backend() == "jax":
        from step_measure import measure_train_step

        return measure_train_step(captioner, *batch, args.steps)
    captioner.train_on_batch(*batch)  # builds, compiles, warms up
    losses = []
    times = timed(lambda: losses.append(float(captioner.train_on_batch(*batch))), args.steps)
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
    results = {"plain": measure(args, fused=False), "fused": measure(args, fused=True)}
    print(f"machine:  {machine()}")
    print(f"backend:  {keras.backend.backend()}, keras {keras.__version__}")
    print(f"input:    {args.preset}, batch {args.batch_size}, {args.image_size} px, "
          f"caption length {args.seq_len}; median / min of {args.steps} steps after 1 warmup")
    print()
    print_columns([
        {
            "path": name,
            "step_ms": cell(r["step_s"] * 1e3),
            "min_ms": cell(r["min_step_s"] * 1e3),
            "peak_MB": cell(r["peak_mb"]),
            "temp_MB": cell(r["temp_mb"]),
            **ratio_cells(r, results["plain"], "plain"),
            "loss": f"{r['loss']:.5f}",
        }
        for name, r in results.items()
    ])


if __name__ == "__main__":
    main()
