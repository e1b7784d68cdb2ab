"""`ov2 caption` and `ov2 embed`: a preset applied to image files."""

from pathlib import Path

from keras_ov2.cli.common import CliError
from keras_ov2.cli.common import add_random_weights
from keras_ov2.cli.common import check_preset
from keras_ov2.cli.common import is_captioner
from keras_ov2.cli.common import preset_image_size
from keras_ov2.cli.common import read_image
from keras_ov2.cli.common import resolve


def add_caption_parser(commands):
    p = commands.add_parser("caption", help="caption image files with a captioner preset")
    p.add_argument("preset", help="captioner preset name or folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--max-length", type=int, help="tokens to generate (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=32)
    add_random_weights(p)
    p.set_defaults(run=run_caption)


def add_embed_parser(commands):
    p = commands.add_parser("embed", help="encode image files into features (.npy)")
    p.add_argument("preset", help="encoder or captioner preset name or folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--image-size", type=int, help="default: the preset's")
    p.add_argument("--tokens", action="store_true",
                   help="save the patch tokens (B, N, D) instead of pooled (B, D)")
    p.add_argument("--batch-size", type=int, default=32)
    add_random_weights(p)
    p.set_defaults(run=run_embed)


def run_caption(args):
    import numpy as np

    from keras_ov2.models import OpenVision2Captioner
    from keras_ov2.data import resize
    from keras_ov2.training import tidy

    images = [read_image(path) for path in args.images]
    if not is_captioner(check_preset(args.preset)):  # before any download
        raise CliError(
            f"preset {args.preset!r} holds an encoder only (no task.json); `ov2 caption` "
            "needs a captioner preset, such as the folder `ov2 pretrain` writes."
        )
    folder, weights = resolve(args.preset, args.random_weights)
    captioner = OpenVision2Captioner.from_preset(folder, load_weights=weights)
    size = captioner.preprocessor.image_converter.image_size[0]
    length = args.max_length or captioner.preprocessor.sequence_length
    for start in range(0, len(images), args.batch_size):
        batch = np.stack([resize(image, size) for image in images[start : start + args.batch_size]])
        captions = captioner.generate(batch, max_length=length)
        for path, caption in zip(args.images[start:], captions):
            print(f"{path}: {tidy(caption)}", flush=True)


def run_embed(args):
    import numpy as np

    from keras_ov2.models import OpenVision2Backbone
    from keras_ov2.models import OpenVision2ImageConverter

    images = [read_image(path) for path in args.images]
    folder, weights = resolve(args.preset, args.random_weights)
    size = args.image_size or preset_image_size(folder)
    if not size:
        raise CliError(f"preset {args.preset!r} does not say its image size; pass --image-size.")
    backbone = OpenVision2Backbone.from_preset(folder, load_weights=weights)
    converter = OpenVision2ImageConverter(image_size=(size, size))
    x = np.stack([np.asarray(converter(image)) for image in images])
    outputs = backbone.predict(x, batch_size=args.batch_size, verbose=0)
    features = outputs["sequence_output" if args.tokens else "pooled_output"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features)
    kind = "patch tokens" if args.tokens else "pooled features"
    print(f"Wrote {kind} {features.shape} {features.dtype} of {len(images)} images to {out}")
