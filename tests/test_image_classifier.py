"""OpenVision2ImageClassifier and its preprocessor: fine-tuning the KerasHub way."""

import keras
import keras_hub
import numpy as np
import pytest
from PIL import Image

from keras_ov2 import OpenVision2Backbone
from keras_ov2 import OpenVision2ImageClassifier
from keras_ov2 import OpenVision2ImageClassifierPreprocessor
from keras_ov2 import OpenVision2ImageConverter

TINY = dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64)
SIZE = 32
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 230]])


def colour_images(per_class, height=40, width=40, seed=0):
    """Three classes of noisy solid-colour uint8 images, and their labels."""
    labels = np.repeat(np.arange(len(COLOURS)), per_class)
    noise = np.random.default_rng(seed).integers(-25, 25, (len(labels), height, width, 3))
    images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype("uint8")
    return images, labels


def encoder_preset(folder, image_size=(SIZE, SIZE), **config):
    """A backbone preset written by `save_to_preset`, with an image converter
    unless `image_size` is None."""
    OpenVision2Backbone(**{**TINY, **config}).save_to_preset(str(folder))
    if image_size is not None:
        OpenVision2ImageConverter(image_size=image_size).save_to_preset(str(folder))
    return str(folder)


def normalized_images(batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, SIZE, SIZE, 3)).astype("float32")


def identity_head(classifier):
    """Makes the head return its input feature."""
    kernel, bias = classifier.get_layer("predictions").get_weights()
    classifier.get_layer("predictions").set_weights([np.eye(*kernel.shape), 0 * bias])


def as_numpy(x):
    return keras.ops.convert_to_numpy(x)


# --- from_preset and fit -------------------------------------------------------


def test_from_an_encoder_preset_overfits_three_colours(tmp_path):
    keras.utils.set_random_seed(0)
    preset = encoder_preset(tmp_path / "encoder")
    classifier = OpenVision2ImageClassifier.from_preset(preset, num_classes=3, load_weights=False)
    assert isinstance(classifier.preprocessor, OpenVision2ImageClassifierPreprocessor)
    assert tuple(classifier.preprocessor.image_converter.image_size) == (SIZE, SIZE)
    images, labels = colour_images(per_class=3)  # 40 px raw uint8: the preprocessor resizes
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    # One full batch per epoch: the first loss is the untrained model's.
    history = classifier.fit(images, labels, batch_size=9, epochs=25, verbose=0).history
    loss, accuracy = classifier.evaluate(images, labels, verbose=0)
    assert accuracy == 1.0
    assert loss < 0.1 < history["loss"][0]


def test_keras_hub_base_classes_find_the_openvision_classes(tmp_path):
    preset = encoder_preset(tmp_path / "encoder")
    classifier = keras_hub.models.ImageClassifier.from_preset(
        preset, num_classes=2, load_weights=False
    )
    assert type(classifier) is OpenVision2ImageClassifier
    preprocessor = keras_hub.models.ImageClassifierPreprocessor.from_preset(preset)
    assert type(preprocessor) is OpenVision2ImageClassifierPreprocessor


def test_fit_on_an_image_folder(tmp_path):
    keras.utils.set_random_seed(0)
    images, labels = colour_images(per_class=4, height=48, width=40)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "photos" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    train = keras.utils.image_dataset_from_directory(
        tmp_path / "photos", image_size=(48, 40), batch_size=4, seed=0, format="grain",
        verbose=False,
    )
    classifier = OpenVision2ImageClassifier.from_preset(
        encoder_preset(tmp_path / "encoder"), num_classes=3, load_weights=False
    )
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    # `fit` maps the attached preprocessor over the Grain batches.
    history = classifier.fit(train, epochs=4, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0]


def test_tf_data_is_refused_with_a_pointer_to_grain(tmp_path):
    images, labels = colour_images(per_class=1)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "photos" / str(label)
        folder.mkdir(parents=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    train = keras.utils.image_dataset_from_directory(
        tmp_path / "photos", image_size=(SIZE, SIZE), batch_size=3, verbose=False
    )
    classifier = OpenVision2ImageClassifier.from_preset(
        encoder_preset(tmp_path / "encoder"), num_classes=3, load_weights=False
    )
    with pytest.raises(RuntimeError, match="Grain"):
        classifier.fit(train, epochs=1, verbose=0)


def test_presets_without_an_image_converter(tmp_path):
    # A shipped encoder config (no image_converter.json): its metadata's image size.
    classifier = OpenVision2ImageClassifier.from_preset(
        "openvision_vit_tiny_patch16_160", num_classes=4, load_weights=False,
        pooling="projected",
    )
    assert tuple(classifier.preprocessor.image_converter.image_size) == (160, 160)
    assert classifier.output_shape == (None, 4)
    # A bare backbone folder: no size to resize to, images keep theirs.
    preset = encoder_preset(tmp_path / "bare", image_size=None)
    preprocessor = OpenVision2ImageClassifierPreprocessor.from_preset(preset)
    assert preprocessor.image_converter.image_size is None
    assert preprocessor(np.zeros((1, 48, 40, 3), "uint8")).shape == (1, 48, 40, 3)


# --- pooling ---------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["pooled", "gap", "projected"])
def test_pooling_feeds_the_expected_feature_to_the_head(pooling):
    backbone = OpenVision2Backbone(**TINY, projection_dim=16)
    width = 16 if pooling == "projected" else TINY["hidden_dim"]
    classifier = OpenVision2ImageClassifier(backbone, num_classes=width, pooling=pooling)
    identity_head(classifier)
    images = normalized_images()
    outputs = backbone(images)
    expected = {
        "pooled": outputs["pooled_output"],
        "gap": keras.ops.mean(outputs["sequence_output"], axis=1),
        "projected": outputs["projected_output"],
    }[pooling]
    np.testing.assert_allclose(as_numpy(classifier(images)), as_numpy(expected), atol=1e-5)


def test_pooling_errors_name_the_choices():
    backbone = OpenVision2Backbone(**TINY)
    with pytest.raises(ValueError, match="'pooled', 'gap', 'projected'"):
        OpenVision2ImageClassifier(backbone, num_classes=3, pooling="avg")
    with pytest.raises(ValueError, match="projection_dim"):
        OpenVision2ImageClassifier(backbone, num_classes=3, pooling="projected")


def test_raw_images_called_on_the_model_are_refused():
    classifier = OpenVision2ImageClassifier(OpenVision2Backbone(**TINY), num_classes=3)
    with pytest.raises(TypeError, match="OpenVision2ImageClassifierPreprocessor"):
        classifier(np.zeros((1, SIZE, SIZE, 3), "uint8"))


# --- round trips -----------------------------------------------------------------


def configured_classifier():
    keras.utils.set_random_seed(1)
    return OpenVision2ImageClassifier(
        OpenVision2Backbone(**TINY),
        num_classes=3,
        preprocessor=OpenVision2ImageClassifierPreprocessor(
            OpenVision2ImageConverter(image_size=(SIZE, SIZE))
        ),
        pooling="gap",
        activation="softmax",
        dropout=0.2,
        head_dtype="float32",
    )


def test_get_config_round_trip():
    classifier = configured_classifier()
    restored = OpenVision2ImageClassifier.from_config(classifier.get_config())
    restored.set_weights(classifier.get_weights())
    assert restored.get_config() == classifier.get_config()
    assert restored.head_dtype.name == "float32"
    images = normalized_images()
    np.testing.assert_array_equal(as_numpy(restored(images)), as_numpy(classifier(images)))


def test_save_to_preset_round_trip(tmp_path):
    classifier = configured_classifier()
    classifier.save_to_preset(str(tmp_path / "classifier"))
    restored = OpenVision2ImageClassifier.from_preset(str(tmp_path / "classifier"))
    assert restored.get_config() == classifier.get_config()
    images, _ = colour_images(per_class=1)  # raw: both preprocessors resize them
    np.testing.assert_array_equal(
        restored.predict(images, verbose=0), classifier.predict(images, verbose=0)
    )
    # A new head on the fine-tuned encoder.
    retargeted = OpenVision2ImageClassifier.from_preset(
        str(tmp_path / "classifier"), num_classes=5
    )
    assert retargeted.output_shape == (None, 5)
    for new, old in zip(retargeted.backbone.weights, classifier.backbone.weights):
        np.testing.assert_array_equal(as_numpy(new), as_numpy(old))


# --- preprocessor ----------------------------------------------------------------


def test_preprocessor_resizes_and_normalizes_like_the_converter():
    images = np.random.default_rng(3).integers(0, 256, (2, 48, 40, 3)).astype("uint8")
    converter = OpenVision2ImageConverter(image_size=(SIZE, SIZE))
    expected = as_numpy(converter(images))
    # Normalises whatever the converter's own default: the backbone needs it.
    preprocessor = OpenVision2ImageClassifierPreprocessor(
        OpenVision2ImageConverter(image_size=(SIZE, SIZE), normalize=False)
    )
    x = preprocessor(images)
    assert keras.backend.standardize_dtype(x.dtype) == "float32"
    np.testing.assert_allclose(as_numpy(x), expected, atol=1e-6)
    x, y = preprocessor(images, np.array([2, 0]))
    np.testing.assert_allclose(as_numpy(x), expected, atol=1e-6)
    np.testing.assert_array_equal(as_numpy(y), [2, 0])
    np.testing.assert_allclose(as_numpy(preprocessor(images[0])), expected[0], atol=1e-6)
