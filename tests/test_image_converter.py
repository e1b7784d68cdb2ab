import json
import os

import keras
import keras_hub
import numpy as np
from keras_hub.src.tests.test_case import TestCase
from PIL import Image

from keras_ov2.layers.image_normalization import IMAGENET_MEAN
from keras_ov2.layers.image_normalization import IMAGENET_STD
from keras_ov2.layers.image_normalization import ImageNormalization
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.openvision_image_converter import OpenVision2ImageConverter


def numpy_normalize(images):
    """The authors' device-side formula, in float64."""
    mean = 255.0 * np.array(IMAGENET_MEAN)
    std = 255.0 * np.array(IMAGENET_STD)
    return (np.asarray(images, "float64") - mean) / std


def random_images(shape, seed=0):
    return np.random.RandomState(seed).randint(0, 256, shape).astype("uint8")


class ImageNormalizationTest(TestCase):
    def test_matches_numpy_for_uint8_and_float(self):
        images = random_images((2, 5, 7, 3))
        layer = ImageNormalization()
        for inputs in (images, images.astype("float32")):
            outputs = layer(inputs)
            self.assertDTypeEqual(outputs, "float32")
            self.assertAllClose(outputs, numpy_normalize(images), atol=1e-5)

    def test_computes_in_float32_under_bfloat16(self):
        images = np.full((1, 2, 2, 3), 128.7, "float32")
        outputs = ImageNormalization(dtype="bfloat16")(images)
        self.assertDTypeEqual(outputs, "bfloat16")
        # Rounding the input to bfloat16 first (128.7 -> 129) would move the
        # result by about 0.005, over bfloat16's step here; float32 does not.
        expected = numpy_normalize(images).astype("float32")
        expected = keras.ops.cast(expected, "bfloat16")
        self.assertAllEqual(
            keras.ops.cast(outputs, "float32"), keras.ops.cast(expected, "float32")
        )

    def test_in_a_compiled_model_with_uint8_inputs(self):
        inputs = keras.Input((4, 6, 3), dtype="uint8")
        model = keras.Model(inputs, ImageNormalization()(inputs))
        images = random_images((3, 4, 6, 3))
        outputs = model.predict(images, verbose=0)
        self.assertAllClose(outputs, numpy_normalize(images), atol=1e-5)

    def test_wrong_shape_or_dtype_is_named(self):
        layer = ImageNormalization()
        with self.assertRaisesRegex(ValueError, r"\(4, 4, 3\)"):
            layer(np.zeros((4, 4, 3), "uint8"))
        with self.assertRaisesRegex(ValueError, r"\(1, 4, 4, 4\)"):
            layer(np.zeros((1, 4, 4, 4), "uint8"))
        with self.assertRaisesRegex(ValueError, "bool"):
            layer(np.zeros((1, 4, 4, 3), "bool"))

    def test_serialization(self):
        self.run_serialization_test(ImageNormalization(name="normalization"))


class OpenVision2ImageConverterTest(TestCase):
    def test_defaults_are_the_released_configs(self):
        converter = OpenVision2ImageConverter(image_size=(224, 224))
        config = converter.get_config()
        self.assertEqual(config["interpolation"], "bilinear")
        self.assertTrue(config["antialias"])
        self.assertFalse(config["crop_to_aspect_ratio"])
        self.assertTrue(config["normalize"])
        self.assertNotIn("scale", config)
        self.assertIs(OpenVision2ImageConverter.backbone_cls, OpenVision2Backbone)

    def test_normalize_matches_numpy(self):
        images = random_images((2, 5, 7, 3))
        outputs = OpenVision2ImageConverter()(images)
        self.assertDTypeEqual(outputs, "float32")
        self.assertAllClose(outputs, numpy_normalize(images), atol=1e-5)
        single = OpenVision2ImageConverter()(images[0].astype("float32"))
        self.assertAllClose(single, numpy_normalize(images[0]), atol=1e-5)

    def test_squash_resize_matches_pil_bilinear(self):
        """open_clip's "squash": PIL bilinear (antialiased) to the full size."""
        images = random_images((48, 64, 3))
        expected = np.asarray(Image.fromarray(images).resize((16, 16), Image.BILINEAR))
        converter = OpenVision2ImageConverter(image_size=(16, 16), normalize=False)
        outputs = keras.ops.convert_to_numpy(converter(images))
        self.assertEqual(outputs.shape, (16, 16, 3))
        self.assertLessEqual(np.abs(outputs.astype(int) - expected).max(), 1)

    def test_uint8_mode_rounds_and_clips(self):
        images = np.array([-20.0, 0.4, 0.6, 127.5, 254.6, 300.0], "float32")
        images = np.broadcast_to(images[None, :, None, None], (2, 6, 1, 3))
        converter = OpenVision2ImageConverter(normalize=False)
        outputs = converter(images)
        self.assertDTypeEqual(outputs, "uint8")
        expected = np.clip(np.round(images), 0, 255).astype("uint8")
        self.assertAllEqual(outputs, expected)

    def test_uint8_mode_per_call(self):
        images = random_images((2, 20, 12, 3))
        normalizing = OpenVision2ImageConverter(image_size=(8, 8))
        uint8 = OpenVision2ImageConverter(image_size=(8, 8), normalize=False)
        per_call = normalizing(images, normalize=False)
        self.assertDTypeEqual(per_call, "uint8")
        self.assertAllEqual(per_call, uint8(images))
        self.assertAllClose(
            normalizing(images), numpy_normalize(uint8(images)), atol=1e-5
        )
        self.assertDTypeEqual(uint8(images, normalize=True), "float32")

    def test_bad_images_are_named(self):
        converter = OpenVision2ImageConverter(image_size=(8, 8))
        with self.assertRaisesRegex(ValueError, r"received shape \(4, 4\)"):
            converter(np.zeros((4, 4), "uint8"))
        with self.assertRaisesRegex(ValueError, r"received shape \(1, 4, 4, 1\)"):
            converter(np.zeros((1, 4, 4, 1), "uint8"))
        with self.assertRaisesRegex(ValueError, "dtype bool"):
            converter(np.zeros((4, 4, 3), "bool"))
        with self.assertRaisesRegex(ValueError, "dtype <U"):
            converter(np.full((4, 4, 3), "x"))

    def test_grain_outputs_numpy(self):
        images = random_images((3, 10, 6, 3))
        converter = OpenVision2ImageConverter(image_size=(4, 4), normalize=False)
        self.run_grain_preprocessing_test(converter, images, converter(images))

    def test_serialization(self):
        self.run_serialization_test(
            OpenVision2ImageConverter(image_size=(8, 8), normalize=False)
        )

    def test_preset_round_trip(self):
        preset = self.get_temp_dir()
        OpenVision2Backbone(
            patch_size=4, hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=16
        ).save_to_preset(preset)
        converter = OpenVision2ImageConverter(image_size=(12, 8), normalize=False)
        converter.save_to_preset(preset)
        with open(os.path.join(preset, "image_converter.json")) as file:
            saved = json.load(file)
        self.assertEqual(
            saved["registered_name"], "keras_ov2>OpenVision2ImageConverter"
        )
        images = random_images((2, 20, 20, 3))
        for loader in (OpenVision2ImageConverter, keras_hub.layers.ImageConverter):
            restored = loader.from_preset(preset)
            self.assertIsInstance(restored, OpenVision2ImageConverter)
            self.assertEqual(restored.image_size, (12, 8))
            self.assertFalse(restored.normalize)
            self.assertAllEqual(restored(images), converter(images))
