"""The OpenVision vision encoder (the same ViT for OpenVision v1 and 2)."""

import numbers

import keras
import keras_hub
from keras import ops

from keras_ov2.layers import ClassToken
from keras_ov2.layers import PatchEmbedding
from keras_ov2.layers import SinCos2DPositionEmbedding
from keras_ov2.layers import TransformerBlock
from keras_ov2.models.common import layouts
from keras_ov2.models.presets import PresetLoading
from keras_ov2.models.presets import register as register_presets


def check_float_images(images, model_name, fix):
    """Raw (integer) pixels would be cast to float silently by a functional
    graph: refuse them, naming the model and `fix`."""
    dtype = keras.backend.standardize_dtype(images.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise TypeError(
            f"{model_name} expects float images normalised with the ImageNet "
            f"mean/std; got dtype {dtype}. {fix}"
        )


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2Backbone(PresetLoading, keras_hub.models.Backbone):
    """ViT encoder: patch conv (no bias) + CLS + fixed 2-D sin-cos positions,
    pre-norm blocks (exact GELU, LayerNorm eps 1e-6), no final token norm.

    Outputs a dict:
    - `"sequence_output"` (B, N, D): the patch tokens after the last block,
      CLS dropped, no final norm: what LLaVA-style models and the OpenVision 2
      caption decoder consume.
    - `"pooled_output"` (B, D): LayerNorm ("encoder_norm") of the mean patch
      token.
    - `"projected_output"` (B, projection_dim), only with `projection_dim`:
      the bias-free OpenVision v1 head applied to `pooled_output`.

    `intermediate_tokens(images, layers=-2)` gives the tokens after earlier
    blocks (LLaVA's penultimate layer) from the same weights.

    The position table is recomputed for each input's grid, so one set of
    weights runs at any image size: `image_shape=(None, None, 3)` (default)
    takes any size. Images are floats already normalised with the ImageNet
    mean/std (see `OpenVision2ImageConverter`). As in the authors' VALID
    convolution, an image whose side is not a multiple of `patch_size` loses
    its last `side % patch_size` pixels.

    Args:
        patch_size: int, side of the square patches.
        hidden_dim: int, token width D.
        num_layers: int, number of transformer blocks.
        num_heads: int, attention heads per block.
        intermediate_dim: int, MLP width.
        projection_dim: int or None, width of the OpenVision v1 head.
        layer_norm_epsilon: float.
        image_shape: (height, width, 3); `None` sides accept any size.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    # RGB images, uint8 or 0-255 floats; the converter resizes and normalises.
    images = np.random.randint(0, 256, size=(2, 224, 224, 3), dtype="uint8")
    converter = keras_ov2.OpenVision2ImageConverter(image_size=(224, 224))

    # A released OpenVision 2 encoder (converted from the authors' weights
    # on first use, then cached).
    encoder = keras_ov2.OpenVision2Backbone.from_preset(
        "openvision2_vit_large_patch14_224"
    )
    outputs = encoder(converter(images))
    outputs["sequence_output"]  # (2, 256, 1024): 16 x 16 patch tokens
    outputs["pooled_output"]  # (2, 1024)
    # LLaVA-1.5's vision tower: patch tokens after the penultimate block.
    encoder.intermediate_tokens(converter(images), layers=-2)  # (2, 256, 1024)

    # A randomly initialised encoder with a custom config.
    encoder = keras_ov2.OpenVision2Backbone(
        patch_size=14,
        hidden_dim=192,
        num_layers=2,
        num_heads=3,
        intermediate_dim=768,
        projection_dim=128,  # the OpenVision v1 head
    )
    outputs = encoder(converter(images))
    outputs["projected_output"]  # (2, 128)
    ```
    """

    def __init__(
        self,
        patch_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        projection_dim=None,
        layer_norm_epsilon=1e-6,
        image_shape=(None, None, 3),
        dtype=None,
        **kwargs,
    ):
        # === Layers ===
        self.patch_embedding = PatchEmbedding(
            hidden_dim, patch_size, dtype=dtype, name="patch_embedding"
        )
        self.position_embedding = SinCos2DPositionEmbedding(
            dtype=dtype, name="position_embedding"
        )
        self.class_token = ClassToken(dtype=dtype, name="class_token")
        self.transformer_layers = [
            TransformerBlock(
                num_heads,
                intermediate_dim,
                activation="gelu",
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.encoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="encoder_norm"
        )
        self.head = None
        if projection_dim is not None:
            self.head = keras.layers.Dense(
                projection_dim,
                use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=dtype,
                name="head",
            )

        # === Functional Model ===
        images = keras.Input(shape=image_shape, name="images")
        grid = self.position_embedding(self.patch_embedding(images))
        x = self.class_token(grid)
        for block in self.transformer_layers:
            x = block(x)
        sequence_output = x[:, 1:, :]
        pooled_output = self.encoder_norm(ops.mean(sequence_output, axis=1))
        outputs = {
            "sequence_output": sequence_output,
            "pooled_output": pooled_output,
        }
        if self.head is not None:
            outputs["projected_output"] = self.head(pooled_output)
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)
        # `call` checks images itself, with errors that say what was expected.
        self.input_spec = None

        # === Config ===
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.projection_dim = projection_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.image_shape = tuple(image_shape)

    def call(self, inputs, training=None, mask=None):
        # The functional graph would silently cast uint8 pixels to float:
        # catch raw images here, before that cast.
        for images in keras.tree.flatten(inputs):
            self._check_images(images)
        return super().call(inputs, training=training, mask=mask)

    def _check_images(self, images):
        self.patch_embedding.check_image_shape(tuple(images.shape))
        check_float_images(images, "OpenVision2Backbone",
                           "Pass raw images through OpenVision2ImageConverter first.")

    def intermediate_tokens(self, images, layers=-2, include_class_token=False):
        """The tokens after chosen transformer blocks, as vision towers of
        LLaVA-style models take them (LLaVA-1.5: the penultimate block, -2,
        patch tokens only).

        Runs this encoder's own layers up to the deepest block asked for (no
        second model, no wasted blocks); works eagerly and on symbolic
        `keras.Input`s, so it can be a frozen tower inside a functional model.

        Args:
            images: normalised float images (B, H, W, 3), as for `call`.
            layers: a block index or a list of them; negative indices count
                from the end: -1 is the last block (its patch tokens are
                `sequence_output`), -2 the penultimate.
            include_class_token: keep the CLS token first, (B, 1 + N, D);
                by default only the N patch tokens, (B, N, D).

        Returns:
            One tensor for an int `layers`, else a list in the order asked.
        """
        self._check_images(images)
        single = isinstance(layers, numbers.Integral)
        blocks = [self._block_index(i) for i in ([layers] if single else layers)]
        if not blocks:
            raise ValueError("`layers` is empty: ask for at least one block index.")
        x = self.class_token(self.position_embedding(self.patch_embedding(images)))
        states = []
        for block in self.transformer_layers[: max(blocks) + 1]:
            x = block(x)
            states.append(x if include_class_token else x[:, 1:, :])
        outputs = [states[i] for i in blocks]
        return outputs[0] if single else outputs

    def _block_index(self, index):
        if not isinstance(index, numbers.Integral) or not -self.num_layers <= index < self.num_layers:
            raise ValueError(
                f"Block index {index!r} is out of range: this encoder has "
                f"{self.num_layers} transformer blocks, so indices run from "
                f"{-self.num_layers} to {self.num_layers - 1} (-1 is the last "
                "block, -2 LLaVA's penultimate)."
            )
        return index % self.num_layers

    def get_config(self):
        config = super().get_config()
        config.update(
            patch_size=self.patch_size,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            projection_dim=self.projection_dim,
            layer_norm_epsilon=self.layer_norm_epsilon,
            image_shape=self.image_shape,
        )
        return config

    get_layout_map = layouts.layout_map_method(layouts.BACKBONE)


register_presets(OpenVision2Backbone)
