"""Does the input pipeline keep up with the train step?

Prints, side by side, at 84 and 224 px:
  - the Grain pipeline's images/s per worker (one thread: one core), on web-like
    JPEGs (`--source-size`, default 512x384, as img2dataset stores them) with
    the authors' augmentations (Inception crop + SimCLR jitter) and without;
  - the same with `--workers` processes;
  - the OV2 captioner's train-step images/s (Keras backend of KERAS_BACKEND,
    JAX by default) for the same batch;
  - the ratio "pipeline / train step": at least 2 means the input keeps up
    with room to spare; below 1 the accelerator waits for data.

    python benchmarks/input_pipeline.py [--preset P] [--batch 16] [--steps 10]
"""

import argparse
import io
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from keras_ov2.data import make_pretraining_dataset  # noqa: E402
from keras_ov2.training import load_captioner  # noqa: E402
from step_measure import machine  # noqa: E402


def web_like_jpegs(count, width, height, seed=0):
    """Smooth gradients with a few shapes, JPEG quality 90: a realistic
    decode cost and file size (noise would make the files far too big)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    records = []
    for i in range(count):
        base = rng.uniform(0, 255, 3) + rng.uniform(-1, 1, 3) * (x[..., None] / width) * 120
        base = base + rng.uniform(-1, 1, 3) * (y[..., None] / height) * 120
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        for _ in range(6):
            x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
            box = (x0, y0, x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2))
            image.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), box)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        records.append({"image": buffer.getvalue(), "caption": f"a picture, number {i}"})
    return records


def pipeline_rate(records, size, batch, augment, workers, seconds):
    """Images/s of a pipeline over `records`, after a warm-up batch."""
    ds = make_pretraining_dataset(records, size, batch, augment_images=augment,
                                  shard_index=0, shard_count=1, num_workers=workers,
                                  read_threads=1)
    iterator = iter(ds)
    next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += len(next(iterator)[0])
    return count / (time.perf_counter() - start)


def train_rate(preset, size, batch, steps):
    """Images/s of the captioner's train step (compiled, data in memory)."""
    captioner = load_captioner(preset)
    captioner.preprocessor.image_converter.image_size = (size, size)
    captioner.preprocessor.sequence_length = 32
    captioner.compile(learning_rate=1e-4, total_steps=steps + 2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    captions = np.array(["a red circle left of a large blue square"] * batch, dtype=object)
    x, y, sw = captioner.preprocessor(images, captions)
    captioner.preprocessor = None  # time the model, not the tokenizer

    def repeat(value, times):
        return np.concatenate([np.asarray(value)] * times)

    def run(times):
        data = ({k: repeat(v, times) for k, v in x.items()}, repeat(y, times), repeat(sw, times))
        start = time.perf_counter()
        captioner.fit(*data[:2], sample_weight=data[2], batch_size=batch, epochs=1,
                      shuffle=False, verbose=0)
        return time.perf_counter() - start

    run(2)  # compiles the train function
    return steps * batch / run(steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="openvision2_captioner_tiny_patch14_84")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="per pipeline measurement")
    parser.add_argument("--source-size", default="512x384", help="WxH of the stored JPEGs")
    parser.add_argument("--sizes", default="84,224")
    args = parser.parse_args()
    width, height = (int(v) for v in args.source_size.split("x"))
    records = web_like_jpegs(256, width, height)
    mean_kb = np.mean([len(r["image"]) for r in records]) / 1024
    print(f"{machine()}; Keras {keras.__version__} on {keras.backend.backend()}; "
          f"{len(records)} JPEGs of {width}x{height} ({mean_kb:.0f} KB each); "
          f"train: {args.preset}, batch {args.batch}, float32")
    header = (f"{'px':>4} | {'1 worker, aug':>13} | {'1 worker, resize':>16} | "
              f"{f'{args.workers} workers, aug':>15} | {'train step':>10} | "
              f"{'input/train (1 worker)':>22}")
    print(header)
    print("-" * len(header))
    for size in (int(s) for s in args.sizes.split(",")):
        one_aug = pipeline_rate(records, size, args.batch, True, 0, args.seconds)
        one_plain = pipeline_rate(records, size, args.batch, False, 0, args.seconds)
        many = pipeline_rate(records, size, args.batch, True, args.workers, args.seconds)
        train = train_rate(args.preset, size, args.batch, args.steps)
        print(f"{size:>4} | {one_aug:>13.0f} | {one_plain:>16.0f} | {many:>15.0f} | "
              f"{train:>10.1f} | {one_aug / train:>22.2f}", flush=True)
    print("Images/s. input/train >= 2: one worker per host feeds the train step twice over.")


if __name__ == "__main__":
    main()
