"""keras_ov2.flops: the analytic count against XLA's own cost analysis (JAX)
and against the figures of the reference (any backend)."""

import keras
import numpy as np
import pytest

import keras_ov2
from keras_ov2 import flops

# Analytic = matmuls only; XLA also counts LayerNorm, GELU, softmax, adds.
# At width 512 those add ~2 %: the analytic count must lie within 5 % below.
TOLERANCE = 0.05
ENCODER = dict(patch_size=8, hidden_dim=512, num_layers=2, num_heads=8, intermediate_dim=2048)
IMAGE, BATCH, SEQUENCE = 64, 2, 32
L14 = dict(patch_size=14, hidden_dim=1024, num_layers=24, intermediate_dim=4096)
DECODER_L = dict(hidden_dim=768, num_layers=12, intermediate_dim=3072, vocabulary_size=32000)

needs_jax = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="XLA's cost analysis of a compiled program is a JAX feature "
    "(jax.jit(...).lower(...).compile().cost_analysis()).",
)


def xla_flops_per_image(function, *args):
    import jax

    cost = jax.jit(function).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"] / BATCH


def assert_close_below(analytic, xla):
    assert analytic <= xla <= analytic * (1 + TOLERANCE), (analytic, xla, xla / analytic)


def tiny_captioner(keep_ratio):
    keras.utils.set_random_seed(0)
    backbone = keras_ov2.OpenVision2Backbone(**ENCODER)
    decoder = keras_ov2.OpenVision2TextDecoder(1000, 512, 2, 8, 2048)
    captioner = keras_ov2.OpenVision2Captioner(backbone, decoder, keep_ratio=keep_ratio, seed=0)
    return captioner


def state(model):
    return (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )


@needs_jax
def test_encoder_forward_matches_xla():
    backbone = keras_ov2.OpenVision2Backbone(**ENCODER)
    images = np.zeros((BATCH, IMAGE, IMAGE, 3), "float32")

    def forward(trainable, non_trainable, images):
        return backbone.stateless_call(trainable, non_trainable, images)[0]

    xla = xla_flops_per_image(forward, *state(backbone), images)
    analytic = flops.encoder_flops_from_config(backbone.get_config(), IMAGE)
    assert_close_below(analytic, xla)


@needs_jax
@pytest.mark.parametrize("keep_ratio", [0.35, 1.0])
def test_captioner_forward_matches_xla(keep_ratio):
    captioner = tiny_captioner(keep_ratio)
    inputs = {
        "images": np.zeros((BATCH, IMAGE, IMAGE, 3), "uint8"),
        "token_ids": np.zeros((BATCH, SEQUENCE - 1), "int32"),
    }

    def forward(trainable, non_trainable, inputs):
        return captioner.stateless_call(trainable, non_trainable, inputs, training=True)[0]

    xla = xla_flops_per_image(forward, *state(captioner), inputs)
    analytic = flops.captioner_flops(
        ENCODER, captioner.decoder.get_config(), IMAGE, keep_ratio, SEQUENCE
    )
    assert_close_below(analytic["total"], xla)


@needs_jax
def test_train_step_is_about_three_forwards():
    import jax

    backbone = keras_ov2.OpenVision2Backbone(**ENCODER)
    images = np.zeros((BATCH, IMAGE, IMAGE, 3), "float32")
    trainable, non_trainable = state(backbone)

    def loss(trainable, images):
        outputs = backbone.stateless_call(trainable, non_trainable, images)[0]
        return keras.ops.mean(outputs["pooled_output"] ** 2)

    xla = xla_flops_per_image(jax.grad(loss), trainable, images)
    forward = flops.encoder_flops_from_config(backbone.get_config(), IMAGE)
    # 3x overcounts by the image gradient of the patch embedding (not taken).
    assert 0.95 <= xla / flops.train_flops(forward) <= 1.05, xla / flops.train_flops(forward)


@needs_jax
def test_openvision1_clips_forward_matches_xla():
    keras.utils.set_random_seed(0)
    backbone = keras_ov2.OpenVision2Backbone(**ENCODER, projection_dim=512)
    text_encoder = keras_ov2.OpenVision1TextEncoder(
        1000, 512, 2, 8, 2048, 512, max_sequence_length=SEQUENCE
    )
    decoder = keras_ov2.OpenVision1CaptionDecoder(1000, 512, 2, 8, 2048, num_queries=24)
    clips = keras_ov2.OpenVisionCLIPS(backbone, text_encoder, decoder)
    ids = np.zeros((BATCH, SEQUENCE), "int32")
    inputs = {
        "images": np.zeros((BATCH, IMAGE, IMAGE, 3), "uint8"),
        "web_token_ids": ids,
        "sentence_token_ids": ids,
    }

    def forward(trainable, non_trainable, inputs):
        return clips.stateless_call(trainable, non_trainable, inputs, training=True)[0]

    xla = xla_flops_per_image(forward, *state(clips), inputs)
    analytic = flops.clips_flops(
        backbone.get_config(), text_encoder.get_config(), decoder.get_config(),
        IMAGE, text_length=SEQUENCE, num_texts=2, contrastive_batch=BATCH,
    )
    assert analytic["contrastive"] > 0
    assert_close_below(analytic["total"], xla)


def test_large_encoder_matches_the_reference_sanity_figure():
    # openvision-reference.md 8.1: L/14 at 224 (257 tokens) ~ 162 GFLOPs,
    # So400m/14 at 384 (730 tokens) ~ 666 GFLOPs, forward, 2 x MACs.
    assert flops.num_patches(224, 14) == 256
    # The reference's figures leave out the patch embedding (~1 GFLOP at 384).
    assert flops.encoder_flops(224, 14, 1024, 24, 4096) / 1e9 == pytest.approx(162, rel=5e-3)
    assert flops.encoder_flops(384, 14, 1152, 27, 4304) / 1e9 == pytest.approx(666, rel=5e-3)


def test_ov2_captioner_is_near_the_authors_table():
    # The OV2 project page (reference 8.1): 208.90 (G)FLOPs per image for
    # L/14 at 224; its unit and what it counts are not stated. Encoder L/14 +
    # decoder L, keep 0.35, captions of 128, our count: 206.8.
    counted = flops.captioner_flops(L14, DECODER_L, 224, 0.35, 128)
    assert counted["total"] / 1e9 == pytest.approx(208.90, rel=0.02)
    assert counted["encoder"] / counted["total"] > 0.75
    # Without masking the decoder sees all 256 tokens: more FLOPs.
    unmasked = flops.captioner_flops(L14, DECODER_L, 224, 1.0, 128)
    assert unmasked["decoder"] > 1.5 * counted["decoder"]


def test_ov1_clips_is_near_the_authors_table():
    # The project page: 271.75 for OpenVision L/14 at 224 (unit and scope
    # not stated). Encoder L/14 + head 768, text encoder L on 80 tokens,
    # decoder L with 128 queries: 269.2 with the web caption encoded once,
    # 283.0 with both texts of a training step.
    encoder = {**L14, "projection_dim": 768}
    text = dict(hidden_dim=768, num_layers=12, intermediate_dim=3072)
    decoder = {**DECODER_L, "num_queries": 128}
    once = flops.clips_flops(encoder, text, decoder, 224, num_texts=1)
    twice = flops.clips_flops(encoder, text, decoder, 224, num_texts=2)
    assert once["total"] / 1e9 == pytest.approx(271.75, rel=0.02)
    assert twice["total"] - once["total"] == once["text_encoder"]
    assert twice["total"] / 1e9 == pytest.approx(271.75, rel=0.05)
    # OV2 is the cheaper model per image, as in the table (208.90 vs 271.75).
    ov2 = flops.captioner_flops(L14, DECODER_L, 224, 0.35, 128)
    assert 1.25 < once["total"] / ov2["total"] < 1.45


def test_sizes_scale_as_expected():
    # Blocks are linear in depth; the patch embedding does not depend on it.
    one = flops.encoder_flops(224, 16, 384, 1, 1536)
    two = flops.encoder_flops(224, 16, 384, 2, 1536)
    block = flops.transformer_block_flops(197, 384, 1536)
    assert two - one == block
    assert one - block == 2 * 196 * 16 * 16 * 3 * 384
    assert flops.encoder_flops(224, 16, 384, 1, 1536, projection_dim=512) == one + 2 * 384 * 512
    assert flops.train_flops(one) == 3 * one
    assert flops.kept_tokens(196, 0.35) == 68
