"""JAX parameter trees (the authors' documented Flax layout) -> keras_ov2."""

import numpy as np
import pytest
from keras import ops

import keras_ov2
from keras_ov2 import cli
from keras_ov2.convert import CheckpointError
from keras_ov2.convert import from_jax_params
from keras_ov2.convert import load_jax_params
from keras_ov2.convert import to_open_clip
from tests import open_clip_reference
from tests.numpy_reference import layer_norm
from tests.open_clip_reference import jax_tree
from tests.open_clip_reference import keras_encoder

HEADS = 4  # the small encoder: width 32, 4 heads


@pytest.fixture(scope="session")
def releases(tmp_path_factory):
    return open_clip_reference.parity_releases(tmp_path_factory)


def assert_same_weights(model, expected):
    """Same variables in the same order (layer names aside), equal values."""
    assert len(model.weights) == len(expected.weights)
    for actual, wanted in zip(model.weights, expected.weights):
        assert actual.path.split("/", 1)[-1] == wanted.path.split("/", 1)[-1]
        np.testing.assert_array_equal(ops.convert_to_numpy(actual.value),
                                      ops.convert_to_numpy(wanted.value), err_msg=actual.path)


def small_tree(seed=0, prefix="img/", projection_dim=16):
    """(Keras encoder, its weights as a JAX tree in the documented layout)."""
    model = keras_encoder(seed, projection_dim)
    state, _ = to_open_clip(model, image_size=32)
    tree = jax_tree({k.removeprefix("visual."): v for k, v in state.items()}, prefix)
    if projection_dim is None:
        del tree[prefix + "head/kernel"]
    return model, tree


def dense_general(tree, heads):
    """The same tree with 3-D attention kernels (Flax DenseGeneral)."""
    out = {}
    for key, value in tree.items():
        name = key.split("/")[-2] if "MultiHeadDotProductAttention_0" in key else None
        dim = value.shape[0]
        if name in ("query", "key", "value") and key.endswith("kernel"):
            value = value.reshape(dim, heads, -1)
        elif name in ("query", "key", "value"):
            value = value.reshape(heads, -1)
        elif name == "out" and key.endswith("kernel"):
            value = value.reshape(heads, -1, value.shape[1])
        out[key] = value
    return out


def test_jax_tree_gives_the_open_clip_outputs(releases):
    folder = releases / "ti16_160"
    from_jax = load_jax_params(folder / "params.npz")
    from_open_clip, open_clip_outputs = open_clip_reference.converted_release(folder)
    assert from_jax.decoder is None
    assert_same_weights(from_jax.backbone, from_open_clip)
    reference = np.load(folder / "reference.npz")
    jax_outputs = from_jax.backbone.predict(reference["images"], verbose=0)
    for key in ("sequence_output", "pooled_output", "projected_output"):
        np.testing.assert_array_equal(jax_outputs[key], open_clip_outputs[key])
        np.testing.assert_allclose(jax_outputs[key], reference[key], atol=1e-5, rtol=0)


def test_openvision2_training_state_with_dense_general_kernels():
    model, tree = small_tree(1, prefix="img_encoder/", projection_dim=None)
    state = {f"params/{k}": v for k, v in dense_general(tree, HEADS).items()}
    state["opt/0/mu/img_encoder/cls"] = np.zeros((1, 1, 32), "float32")
    result = from_jax_params(state)
    assert result.backbone.num_heads == HEADS and result.backbone.head is None
    assert result.skipped == ["opt/ (optimizer state)"]
    assert_same_weights(result.backbone, model)


def test_nested_tree_and_v1_parts_not_loaded():
    model, tree = small_tree(2)
    nested = {}
    for key, value in tree.items():
        node = nested
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    nested["txt"] = {"Embed_0": {"embedding": np.zeros((8, 4), "float32")}}
    nested["t"] = np.zeros((1,), "float32")
    nested["txt_decoder"] = {"learnable_tokens": np.zeros((4, 8), "float32")}
    result = from_jax_params(nested, num_heads=HEADS)
    assert_same_weights(result.backbone, model)
    assert result.decoder is None
    assert result.skipped == [
        "txt/ (OpenVision v1 text encoder)",
        "t (OpenVision v1 temperature)",
        "txt_decoder/ (OpenVision v1 caption decoder)",
    ]


def test_unknown_width_asks_for_num_heads():
    _, tree = small_tree()
    with pytest.raises(CheckpointError, match="pass num_heads"):
        from_jax_params(tree)


def test_missing_extra_and_misshapen_keys_are_named():
    _, tree = small_tree()
    key = "img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"
    missing = {k: v for k, v in tree.items() if k != key}
    with pytest.raises(CheckpointError, match=f"p.npz: missing key '{key}'"):
        from_jax_params(missing, origin="p.npz", num_heads=HEADS)
    extra = {**tree, "img/pos_embedding": np.zeros((1, 16, 32), "float32")}
    with pytest.raises(CheckpointError, match="unexpected key.*'img/pos_embedding'"):
        from_jax_params(extra, num_heads=HEADS)
    stray = {**tree, "ema/img/cls": np.zeros((1, 1, 32), "float32")}
    with pytest.raises(CheckpointError, match="'ema/img/cls'"):
        from_jax_params(stray, num_heads=HEADS)
    misshapen = {**tree, "img/encoder_norm/scale": np.ones(31, "float32")}
    with pytest.raises(CheckpointError, match=r"'img/encoder_norm/scale' has shape \(31,\)"):
        from_jax_params(misshapen, num_heads=HEADS)


def test_orbax_directory_says_how_to_make_an_npz(tmp_path):
    folder = tmp_path / "checkpoint.npz"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="(?s)Orbax.*flatten_dict"):
        load_jax_params(folder)


def test_npz_holding_pickles_is_refused(tmp_path):
    path = tmp_path / "params.npz"
    np.savez(path, **{"img/cls": np.array([object()], dtype=object)})
    with pytest.raises(CheckpointError, match=f"{path}: refused to load"):
        load_jax_params(path)


# --- OpenVision 2 caption decoder -------------------------------------------

VOCABULARY, WIDTH, MLP, DECODER_HEADS = 96, 64, 128, 4


def decoder_tree(visual_dim, depth=2, seed=3):
    """Random `txt_decoder/` parameters, attention in DenseGeneral form."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.2):
        return rng.normal(scale=scale, size=shape).astype("float32")

    hd = WIDTH // DECODER_HEADS
    p = "txt_decoder/"
    tree = {
        p + "Embed_0/embedding": normal(VOCABULARY, WIDTH, scale=1.0),
        p + "image_projection_layer/kernel": normal(visual_dim, WIDTH),
        p + "decoder_norm/scale": 1 + normal(WIDTH),
        p + "decoder_norm/bias": normal(WIDTH),
        p + "head/kernel": normal(WIDTH, VOCABULARY),
    }
    for i in range(depth):
        b = f"{p}Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_0/"
        for name in ("query", "key", "value"):
            tree[f"{a}{name}/kernel"] = normal(WIDTH, DECODER_HEADS, hd)
            tree[f"{a}{name}/bias"] = normal(DECODER_HEADS, hd)
        tree[a + "out/kernel"] = normal(DECODER_HEADS, hd, WIDTH)
        tree[a + "out/bias"] = normal(WIDTH)
        for norm in ("LayerNorm_0", "LayerNorm_1"):
            tree[f"{b}{norm}/scale"] = 1 + normal(WIDTH)
            tree[f"{b}{norm}/bias"] = normal(WIDTH)
        tree[b + "MlpBlock_0/Dense_0/kernel"] = normal(WIDTH, MLP)
        tree[b + "MlpBlock_0/Dense_0/bias"] = normal(MLP)
        tree[b + "MlpBlock_0/Dense_1/kernel"] = normal(MLP, WIDTH)
        tree[b + "MlpBlock_0/Dense_1/bias"] = normal(WIDTH)
    return tree


def decoder_logits(tree, visual, token_ids):
    """The authors' `text_decoder_v2` (concat fusion, fully causal mask) in NumPy."""
    t = {k.removeprefix("txt_decoder/"): v.astype("float64") for k, v in tree.items()}
    x = np.concatenate(
        [visual @ t["image_projection_layer/kernel"], t["Embed_0/embedding"][token_ids]], 1
    )
    length, hd = x.shape[1], WIDTH // DECODER_HEADS
    causal = np.tril(np.ones((length, length), bool))
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in t:
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_0/"
        h = layer_norm(x, t[b + "LayerNorm_0/scale"], t[b + "LayerNorm_0/bias"])
        q, k, v = (np.einsum("bld,dhk->blhk", h, t[f"{a}{n}/kernel"]) + t[f"{a}{n}/bias"]
                   for n in ("query", "key", "value"))
        scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(hd)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = np.einsum("bhqs,bshk->bqhk", probs, v)
        x = x + np.einsum("bqhk,hkd->bqd", attended, t[a + "out/kernel"]) + t[a + "out/bias"]
        h = layer_norm(x, t[b + "LayerNorm_1/scale"], t[b + "LayerNorm_1/bias"])
        h = h @ t[b + "MlpBlock_0/Dense_0/kernel"] + t[b + "MlpBlock_0/Dense_0/bias"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        x = x + h @ t[b + "MlpBlock_0/Dense_1/kernel"] + t[b + "MlpBlock_0/Dense_1/bias"]
        i += 1
    x = layer_norm(x[:, visual.shape[1]:], t["decoder_norm/scale"], t["decoder_norm/bias"])
    return x @ t["head/kernel"]


@pytest.fixture(scope="module")
def training_state():
    """An OpenVision 2 parameter tree with its decoder, and its conversion."""
    _, tree = small_tree(4, prefix="img_encoder/", projection_dim=None)
    tree.update(decoder_tree(visual_dim=32))
    return tree, from_jax_params(tree, num_heads=HEADS)


def test_openvision2_decoder_matches_the_authors_formulas(training_state):
    tree, result = training_state
    decoder = result.decoder
    assert (decoder.vocabulary_size, decoder.hidden_dim, decoder.num_layers,
            decoder.num_heads, decoder.intermediate_dim) == (VOCABULARY, WIDTH, 2, 4, MLP)
    rng = np.random.default_rng(5)
    visual = rng.normal(size=(2, 6, 32)).astype("float32")
    token_ids = rng.integers(0, VOCABULARY, size=(2, 5)).astype("int32")
    expected = decoder_logits(tree, visual.astype("float64"), token_ids)
    logits = ops.convert_to_numpy(decoder(visual, token_ids))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_decoder_keys_are_checked_too(training_state):
    tree = dict(training_state[0])
    tree["txt_decoder/image_projection_layer/kernel"] = np.zeros((31, WIDTH), "float32")
    with pytest.raises(CheckpointError, match="'txt_decoder/image_projection_layer/kernel'"):
        from_jax_params(tree, num_heads=HEADS)


def test_cli_writes_a_captioner_preset_from_a_training_state(tmp_path, training_state):
    tree, expected = training_state
    np.savez(tmp_path / "params.npz", **tree)
    out = tmp_path / "captioner"
    assert cli.main(["convert", str(tmp_path / "params.npz"), str(out),
                     "--num-heads", str(HEADS), "--image-size", "32"]) == 0
    captioner = keras_ov2.OpenVision2Captioner.from_preset(str(out))
    assert_same_weights(captioner.decoder, expected.decoder)
    assert_same_weights(captioner.backbone, expected.backbone)
    assert captioner.preprocessor.image_converter.image_size == (32, 32)
