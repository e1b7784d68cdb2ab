import keras
import numpy as np
import pytest
from keras import ops
from keras_hub.src.tests.test_case import TestCase

from keras_ov2 import OpenVision2Backbone
from tests import numpy_reference

TINY = dict(
    patch_size=8,
    hidden_dim=32,
    num_layers=2,
    num_heads=4,
    intermediate_dim=64,
)


def random_images(size, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, size, size, 3)).astype("float32")


def weights_by_path(model):
    return {v.path: ops.convert_to_numpy(v) for v in model.weights}


def randomize(model, seed=0):
    """Non-trivial weights everywhere (LayerNorm scales and biases too)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))


class OpenVision2BackboneTest(TestCase):
    def test_backbone_basics(self):
        self.run_backbone_test(
            cls=OpenVision2Backbone,
            init_kwargs={**TINY, "projection_dim": 16},
            input_data=ops.ones((2, 32, 32, 3)),
            expected_output_shape={
                "sequence_output": (2, 16, 32),
                "pooled_output": (2, 32),
                "projected_output": (2, 16),
            },
        )

    def test_saved_model(self):
        self.run_model_saving_test(
            cls=OpenVision2Backbone,
            init_kwargs=TINY,
            input_data=ops.ones((2, 32, 32, 3)),
        )

    def test_matches_numpy_reference_at_two_resolutions(self):
        model = OpenVision2Backbone(**TINY, projection_dim=16)
        randomize(model)
        weights = weights_by_path(model)
        for size in (40, 64):
            images = random_images(size)
            expected = numpy_reference.encoder_forward(
                weights, images.astype("float64"), patch=8, heads=4, num_layers=2
            )
            outputs = model(images)
            assert set(outputs) == set(expected) - {"blocks"}
            for key, value in outputs.items():
                self.assertAllClose(value, expected[key], atol=1e-5, rtol=1e-5)

    def test_intermediate_tokens_match_a_block_by_block_computation(self):
        model = OpenVision2Backbone(**{**TINY, "num_layers": 3})
        randomize(model, seed=1)
        images = random_images(40)
        blocks = numpy_reference.encoder_forward(
            weights_by_path(model), images.astype("float64"), patch=8, heads=4, num_layers=3
        )["blocks"]
        penultimate = model.intermediate_tokens(images)  # layers=-2 by default
        self.assertAllClose(penultimate, blocks[1][:, 1:], atol=1e-5, rtol=1e-5)
        asked = model.intermediate_tokens(images, layers=[0, -1, 1], include_class_token=True)
        assert [tuple(t.shape) for t in asked] == [(2, 26, 32)] * 3
        for tokens, expected in zip(asked, (blocks[0], blocks[2], blocks[1])):
            self.assertAllClose(tokens, expected, atol=1e-5, rtol=1e-5)
        # The last block's patch tokens are the backbone's sequence_output.
        self.assertAllClose(
            model.intermediate_tokens(images, layers=-1),
            model(images)["sequence_output"], atol=1e-6,
        )

    def test_intermediate_tokens_in_a_functional_vision_tower(self):
        model = OpenVision2Backbone(**TINY)
        randomize(model, seed=2)
        images = keras.Input((32, 32, 3))
        tower = keras.Model(images, model.intermediate_tokens(images, layers=-2))
        weights = {id(v) for v in tower.weights}
        # The tower shares the encoder's variables: no second copy of weights.
        assert weights <= {id(v) for v in model.weights}
        data = random_images(32)
        self.assertAllClose(tower(data), model.intermediate_tokens(data, layers=0), atol=1e-6)

    def test_intermediate_tokens_reject_bad_block_indices(self):
        model = OpenVision2Backbone(**TINY)
        data = random_images(32)
        for layers in (2, -3, [0, 5]):
            with pytest.raises(ValueError, match="2 transformer blocks.*-2 to 1"):
                model.intermediate_tokens(data, layers=layers)
        with pytest.raises(ValueError, match="at least one block"):
            model.intermediate_tokens(data, layers=[])
        with pytest.raises(TypeError, match="OpenVision2ImageConverter"):
            model.intermediate_tokens(np.zeros((1, 32, 32, 3), "uint8"))

    def test_one_set_of_weights_runs_at_84_and_224_px(self):
        model = OpenVision2Backbone(**{**TINY, "patch_size": 14})
        small = model(random_images(84))
        large = model(random_images(224))
        assert tuple(small["sequence_output"].shape) == (2, 36, 32)
        assert tuple(large["sequence_output"].shape) == (2, 256, 32)
        assert len(model.weights) == len(weights_by_path(model))

    def test_remainder_pixels_are_dropped_like_a_valid_convolution(self):
        model = OpenVision2Backbone(**TINY)
        images = random_images(45)  # 45 = 5 * 8 + 5: the last 5 px are unused
        cropped = images[:, :40, :40]
        changed = images.copy()
        changed[:, 40:, :] = 100.0
        changed[:, :, 40:] = -100.0
        reference = model(cropped)["sequence_output"]
        assert tuple(reference.shape) == (2, 25, 32)
        self.assertAllClose(model(images)["sequence_output"], reference, atol=1e-6)
        self.assertAllClose(model(changed)["sequence_output"], reference, atol=1e-6)

    def test_non_square_images(self):
        model = OpenVision2Backbone(**TINY)
        outputs = model(np.zeros((1, 16, 48, 3), "float32"))
        assert tuple(outputs["sequence_output"].shape) == (1, 12, 32)

    def test_pooled_output_is_layer_norm_of_the_mean_patch_token(self):
        model = OpenVision2Backbone(**TINY)
        randomize(model, seed=3)
        outputs = model(random_images(32))
        tokens = ops.convert_to_numpy(outputs["sequence_output"])
        weights = weights_by_path(model)
        expected = numpy_reference.layer_norm(
            tokens.mean(1),
            weights["encoder_norm/gamma"],
            weights["encoder_norm/beta"],
        )
        self.assertAllClose(outputs["pooled_output"], expected, atol=1e-5)

    def test_no_projection_output_without_projection_dim(self):
        outputs = OpenVision2Backbone(**TINY)(random_images(32))
        assert set(outputs) == {"sequence_output", "pooled_output"}

    def test_image_smaller_than_a_patch_is_rejected(self):
        model = OpenVision2Backbone(**TINY)
        with pytest.raises(ValueError, match="smaller than one patch"):
            model(np.zeros((1, 7, 32, 3), "float32"))

    def test_wrong_channel_count_is_rejected(self):
        model = OpenVision2Backbone(**TINY)
        with pytest.raises(ValueError, match="3 channels"):
            model(np.zeros((1, 32, 32, 4), "float32"))

    def test_wrong_rank_is_rejected(self):
        model = OpenVision2Backbone(**TINY)
        with pytest.raises(ValueError, match="rank 4"):
            model(np.zeros((32, 32, 3), "float32"))

    def test_uint8_images_are_rejected_with_a_pointer_to_the_converter(self):
        model = OpenVision2Backbone(**TINY)
        with pytest.raises(TypeError, match="OpenVision2ImageConverter"):
            model(np.zeros((1, 32, 32, 3), "uint8"))

    def test_preset_round_trip(self):
        model = OpenVision2Backbone(**TINY, projection_dim=16)
        randomize(model, seed=5)
        folder = self.get_temp_dir()
        model.save_to_preset(folder)
        restored = OpenVision2Backbone.from_preset(folder)
        images = random_images(32)
        for key, value in model(images).items():
            self.assertAllClose(restored(images)[key], value, atol=0)
        assert restored.get_config() == model.get_config()
