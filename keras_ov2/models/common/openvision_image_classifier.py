"""Fine-tuning an OpenVision encoder: backbone + pooled feature + Dense head."""

import keras
import keras_hub
from keras import ops

from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.openvision_backbone import check_float_images
from keras_ov2.models.common.openvision_image_classifier_preprocessor import (
    OpenVision2ImageClassifierPreprocessor,
)
from keras_ov2.models.presets import PresetLoading

POOLINGS = ("pooled", "gap", "projected")


def image_features(outputs, pooling):
    """The (B, D) feature the head reads from the backbone's output dict."""
    if pooling not in POOLINGS:
        raise ValueError(
            f"Unknown pooling {pooling!r}; expected one of "
            f"{', '.join(map(repr, POOLINGS))}."
        )
    if pooling == "gap":
        return ops.mean(outputs["sequence_output"], axis=1)
    if pooling == "projected" and "projected_output" not in outputs:
        raise ValueError(
            "pooling='projected' needs a backbone with a projection head "
            "(`projection_dim`, the OpenVision v1 encoders); this backbone "
            "has none. Use pooling='pooled' or 'gap'."
        )
    return outputs[f"{pooling}_output"]


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2ImageClassifier(PresetLoading, keras_hub.models.ImageClassifier):
    """An `OpenVision2Backbone` with a Dense classification head, to
    fine-tune the encoder (or probe it, with `backbone.trainable = False`)
    through `fit`.

    The head reads one (B, D) feature per image, chosen by `pooling`:
    - `"pooled"` (default): the backbone's `pooled_output`, the LayerNorm of
      the mean patch token: the encoder's own image feature.
    - `"gap"`: the plain mean of `sequence_output` (no norm).
    - `"projected"`: `projected_output`, only for backbones with the
      OpenVision v1 head (`projection_dim`).

    Inputs are the float images `OpenVision2Backbone` takes; the attached
    `OpenVision2ImageClassifierPreprocessor` makes them from raw 0-255
    images in `fit`, `predict` and `evaluate`, on Grain datasets, NumPy
    arrays or backend tensors (not `tf.data`: the preprocessing runs in
    Python). `compile()` defaults to KerasHub's: Adam(5e-5), sparse
    categorical cross-entropy, accuracy.

    `from_preset(preset, num_classes=...)` builds a new head on any
    preset's encoder: an encoder preset, a captioner's, or a backbone
    folder written by `save_to_preset`. Without `num_classes`, a
    classifier preset comes back with its trained head.

    Args:
        backbone: an `OpenVision2Backbone`.
        num_classes: int, the number of classes.
        preprocessor: an `OpenVision2ImageClassifierPreprocessor` or None.
        pooling: "pooled", "gap" or "projected" (see above).
        activation: the head's activation; None (default) gives logits.
        dropout: float, dropout rate on the feature before the head.
        head_dtype: the head's dtype policy; None follows the backbone.

    Example:
    ```python
    import grain
    import keras
    import numpy as np
    import keras_ov2

    # An encoder preset's architecture and image size, with a new 3-class
    # head (`load_weights=True`, the default, loads the released encoder).
    classifier = keras_ov2.OpenVision2ImageClassifier.from_preset(
        "openvision_vit_tiny_patch16_160", num_classes=3, load_weights=False
    )

    # An image folder, one subfolder per class. `format="grain"`: the
    # preprocessor runs in Python, so in a Grain pipeline, not in tf.data.
    train = keras.utils.image_dataset_from_directory(
        "photos/", image_size=(160, 160), batch_size=16, format="grain"
    )
    classifier.fit(train, epochs=3)  # the preprocessor is mapped over it

    # A Grain dataset of (uint8 image, label) pairs, any image size.
    images = np.random.randint(0, 256, size=(8, 200, 300, 3), dtype="uint8")
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    train = grain.MapDataset.source(list(zip(images, labels)))
    train = train.shuffle(seed=0).repeat().batch(4)
    classifier.compile(optimizer=keras.optimizers.AdamW(1e-4))
    classifier.fit(train, steps_per_epoch=2, epochs=1)

    classifier.predict(images)  # (8, 3) logits
    classifier.save_to_preset("my_classifier")

    # From parts, on the v1 encoder's projected feature.
    classifier = keras_ov2.OpenVision2ImageClassifier(
        backbone=keras_ov2.OpenVision2Backbone(
            patch_size=16,
            hidden_dim=64,
            num_layers=2,
            num_heads=2,
            intermediate_dim=256,
            projection_dim=32,
        ),
        num_classes=10,
        preprocessor=keras_ov2.OpenVision2ImageClassifierPreprocessor(
            keras_ov2.OpenVision2ImageConverter(image_size=(64, 64))
        ),
        pooling="projected",
        dropout=0.1,
    )
    ```
    """

    backbone_cls = OpenVision2Backbone
    preprocessor_cls = OpenVision2ImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        pooling="pooled",
        activation=None,
        dropout=0.0,
        head_dtype=None,
        **kwargs,
    ):
        head_policy = keras.dtype_policies.get(head_dtype or backbone.dtype_policy)

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=head_policy, name="output_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_policy, name="predictions"
        )

        # === Functional Model ===
        inputs = backbone.input
        features = image_features(backbone(inputs), pooling)
        outputs = self.output_dense(self.output_dropout(features))
        # KerasHub's `ImageClassifier.__init__` pools a 2-D feature map;
        # build the functional model with `Task`'s instead.
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)
        # `call` checks images itself, with errors that say what was expected.
        self.input_spec = None

        # === Config ===
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = activation
        self.dropout = dropout
        self.head_dtype = None
        if head_dtype is not None:
            self.head_dtype = keras.dtype_policies.get(head_dtype)

    def call(self, inputs, training=None, mask=None):
        # The functional graph would silently cast uint8 pixels to float
        # before the backbone's own check sees them.
        check_float_images(
            inputs, type(self).__name__,
            "`fit`, `predict` and `evaluate` preprocess raw images with the "
            "attached preprocessor; when calling the model, pass them through "
            "OpenVision2ImageClassifierPreprocessor first.",
        )
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        config = super().get_config()  # KerasHub's: all but head_dtype
        config["head_dtype"] = None
        if self.head_dtype is not None:
            config["head_dtype"] = keras.dtype_policies.serialize(self.head_dtype)
        return config
