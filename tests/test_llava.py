"""The LLaVA-style model: OpenVision encoder -> projector -> KerasHub LM."""

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

import keras_ov2

SIZE = 32  # pixels: 4 x 4 = 16 image tokens with patch 8
NUM_IMAGE_TOKENS = (SIZE // 8) ** 2
SEQUENCE = 8
PROMPT = "what colour?"
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
FAMILIES = ("gpt2", "gemma", "llama")


def tokenizer():
    return keras_ov2.OpenVision2Tokenizer()


def language_backbone(family):
    common = dict(
        vocabulary_size=tokenizer().vocabulary_size(),
        num_layers=2,
        hidden_dim=32,
        intermediate_dim=64,
    )
    if family == "gpt2":
        return keras_hub.models.GPT2Backbone(
            num_heads=2, max_sequence_length=32, dropout=0.0, **common
        )
    if family == "gemma":
        return keras_hub.models.GemmaBackbone(
            num_query_heads=2, num_key_value_heads=1, head_dim=16, **common
        )
    return keras_hub.models.LlamaBackbone(
        num_query_heads=2, num_key_value_heads=1, **common
    )


def preprocessor():
    return keras_ov2.OpenVisionLLaVACausalLMPreprocessor(
        tokenizer(),
        keras_ov2.OpenVision2ImageConverter(image_size=(SIZE, SIZE)),
        sequence_length=SEQUENCE,
    )


def tiny_llava(family="gpt2", with_preprocessor=True, **kwargs):
    encoder = keras_ov2.OpenVision2Backbone(
        patch_size=8, hidden_dim=32, num_layers=3, num_heads=2, intermediate_dim=64
    )
    backbone = keras_ov2.OpenVisionLLaVABackbone(
        encoder, language_backbone(family), **kwargs
    )
    return keras_ov2.OpenVisionLLaVACausalLM(
        backbone, preprocessor() if with_preprocessor else None
    )


def colour_data(count=4, seed=0):
    """Noisy red and blue squares, asked about, with their colour as answer."""
    rng = np.random.default_rng(seed)
    answers = [("red", "blue")[i % 2] for i in range(count)]
    noise = rng.integers(-20, 21, size=(count, SIZE, SIZE, 3))
    images = np.array([COLOURS[a] for a in answers])[:, None, None, :] + noise
    images = np.clip(images, 0, 255).astype("uint8")
    return {"images": images, "prompts": [PROMPT] * count, "responses": answers}


def numpy_tree(tree):
    return keras.tree.map_structure(ops.convert_to_numpy, tree)


def weights_of(layer):
    return [np.array(ops.convert_to_numpy(w)) for w in layer.weights]


def changed(before, layer):
    return any(not np.array_equal(a, b) for a, b in zip(before, weights_of(layer)))


# --- Preprocessing and the loss ---------------------------------------------


def test_preprocessor_weights_only_the_response_and_its_end():
    ids = tokenizer().tokenize
    bos, eos, pad = 1, 2, 0
    prompt, red, blue = ids(PROMPT), ids("red"), ids("blue")
    x, y, sample_weight = numpy_tree(preprocessor()(colour_data(2)))
    rows = [[bos, *prompt, *red, eos], [bos, *prompt, *blue, eos]]
    packed = np.array([r + [pad] * (SEQUENCE + 1 - len(r)) for r in rows])
    np.testing.assert_array_equal(x["token_ids"], packed[:, :-1])
    np.testing.assert_array_equal(y, packed[:, 1:])
    np.testing.assert_array_equal(x["padding_mask"], packed[:, :-1] != pad)
    # y = [what colour ? red [eos] pad...]: the answer and [eos] only.
    response = np.zeros((2, SEQUENCE), "float32")
    response[:, len(prompt) : len(prompt) + 2] = 1.0
    np.testing.assert_array_equal(sample_weight, response)
    assert x["images"].shape == (2, SIZE, SIZE, 3) and x["images"].dtype == "float32"

    # One example in, one example out (Grain maps per example).
    one = colour_data(1)
    x1, y1, w1 = numpy_tree(preprocessor()(
        {"images": one["images"][0], "prompts": PROMPT, "responses": "red"}
    ))
    assert x1["images"].shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(y1, y[0])
    np.testing.assert_array_equal(w1, sample_weight[0])

    # A cut answer loses its [eos] and is weighted to the end.
    long = {**one, "responses": ["red " * 20]}
    _, y_long, w_long = numpy_tree(preprocessor()(long))
    assert eos not in y_long[0]
    np.testing.assert_array_equal(w_long[0, len(prompt) :], 1.0)

    # Generation inputs: [bos] prompt, no [eos], padded.
    inputs = numpy_tree(preprocessor().generate_preprocess(
        {"images": one["images"], "prompts": [PROMPT]}, sequence_length=10
    ))
    np.testing.assert_array_equal(
        inputs["token_ids"][0], [bos, *prompt] + [pad] * (9 - len(prompt))
    )
    np.testing.assert_array_equal(inputs["padding_mask"][0], np.arange(10) <= len(prompt))


def test_preprocessor_errors_name_what_is_wrong():
    data = colour_data(2)
    with pytest.raises(ValueError, match="'responses'"):
        preprocessor()({"images": data["images"], "prompts": data["prompts"]})
    with pytest.raises(ValueError, match="2 image\\(s\\) and 1 responses"):
        preprocessor()({**data, "responses": ["red"]})


def test_loss_is_the_mean_cross_entropy_over_response_tokens():
    keras.utils.set_random_seed(0)
    model = tiny_llava(with_preprocessor=False)
    x, y, sample_weight = preprocessor()(colour_data(4))
    logits = model(x)
    assert tuple(logits.shape) == (4, SEQUENCE, tokenizer().vocabulary_size())
    def compute_loss(y):
        return float(ops.convert_to_numpy(model.compute_loss(x, y, logits, sample_weight)))

    loss = compute_loss(y)

    log_probs = ops.convert_to_numpy(ops.log_softmax(logits, axis=-1))
    y, weights = ops.convert_to_numpy(y), ops.convert_to_numpy(sample_weight)
    picked = np.take_along_axis(log_probs, y[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(loss, -(picked * weights).sum() / weights.sum(), rtol=1e-5)

    # The prompt's and the padding's targets do not count.
    other = np.where(weights > 0, y, (y + 7) % 100)
    assert np.any(other != y)
    np.testing.assert_allclose(compute_loss(ops.convert_to_tensor(other)), loss, rtol=1e-6)


# --- The model ---------------------------------------------------------------


def reference_states(family, lm, embeddings, mask):
    """Each family's decoder run by hand on given input embeddings."""
    if family == "gpt2":
        x = embeddings + lm.position_embedding(embeddings)
        for layer in lm.transformer_layers:
            x = layer(x, decoder_padding_mask=mask)
    elif family == "gemma":
        x = embeddings * np.sqrt(lm.hidden_dim).astype("float32")
        for layer in lm.transformer_layers:
            x = layer(x, padding_mask=mask)
    else:
        x = embeddings
        for layer in lm.transformer_layers:
            x = layer(x, decoder_padding_mask=mask)
    return lm.layer_norm(x)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_from_the_chosen_block_come_before_the_text(family):
    keras.utils.set_random_seed(1)
    model = tiny_llava(family, with_preprocessor=False)
    backbone = model.backbone
    x, _, _ = preprocessor()({**colour_data(2), "prompts": ["what colour?", "colour"]})
    images, token_ids = x["images"], x["token_ids"]

    image_tokens = backbone.projector(
        backbone.vision_encoder.intermediate_tokens(images, layers=-2)
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(backbone.embed_images(images)),
        ops.convert_to_numpy(image_tokens),
    )
    assert tuple(image_tokens.shape) == (2, NUM_IMAGE_TOKENS, 32)
    lm = backbone.language_backbone
    embeddings = ops.concatenate([image_tokens, lm.token_embedding(token_ids)], axis=1)
    mask = ops.concatenate(
        [ops.ones((2, NUM_IMAGE_TOKENS), "int32"), ops.cast(x["padding_mask"], "int32")],
        axis=1,
    )
    states = reference_states(family, lm, embeddings, mask)[:, NUM_IMAGE_TOKENS:]
    expected = lm.token_embedding(states, reverse=True)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(x)), ops.convert_to_numpy(expected), atol=1e-5
    )


def test_vision_layer_picks_the_block():
    model = tiny_llava(vision_layer=0, with_preprocessor=False)
    backbone = model.backbone
    images = preprocessor()(colour_data(1))[0]["images"]
    first = backbone.projector(backbone.vision_encoder.intermediate_tokens(images, 0))
    last = backbone.projector(backbone.vision_encoder.intermediate_tokens(images, -1))
    tokens = ops.convert_to_numpy(backbone.embed_images(images))
    np.testing.assert_allclose(tokens, ops.convert_to_numpy(first))
    assert not np.allclose(tokens, ops.convert_to_numpy(last))


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_fit_trains_the_vision_tower_only_when_asked(freeze_vision):
    keras.utils.set_random_seed(2)
    model = tiny_llava(freeze_vision=freeze_vision)
    backbone = model.backbone
    encoder = backbone.vision_encoder
    assert encoder.trainable is not freeze_vision
    trained = {id(v) for v in model.trainable_variables}
    used = [encoder.patch_embedding, *encoder.transformer_layers[:-1]]
    assert all((id(v) in trained) is not freeze_vision for u in used for v in u.weights)
    # The last block and the pooling norm never reach the language model.
    unused = [encoder.transformer_layers[-1], encoder.encoder_norm]
    assert not any(id(v) in trained for u in unused for v in u.weights)
    before = {
        "encoder": weights_of(encoder),
        "projector": weights_of(backbone.projector),
        "lm": weights_of(backbone.language_backbone.transformer_layers[0]),
    }
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(colour_data(4), batch_size=4, epochs=2, verbose=0)
    assert changed(before["projector"], backbone.projector)
    assert changed(before["lm"], backbone.language_backbone.transformer_layers[0])
    assert changed(before["encoder"], encoder) is not freeze_vision


@pytest.mark.parametrize("family", FAMILIES)
def test_one_training_step_for_each_language_model_family(family):
    keras.utils.set_random_seed(3)
    model = tiny_llava(family, with_preprocessor=False)
    x, y, sample_weight = preprocessor()(colour_data(2))
    before = weights_of(model.backbone.language_backbone.transformer_layers[-1])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    loss = model.train_on_batch(x, y, sample_weight=sample_weight)
    loss = loss[0] if isinstance(loss, list) else loss
    assert np.isfinite(loss)
    assert changed(before, model.backbone.language_backbone.transformer_layers[-1])


def test_unsupported_language_backbones_and_lengths_get_clear_errors():
    encoder = keras_ov2.OpenVision2Backbone(
        patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64
    )
    # OPT embeds positions from the token ids inside one layer.
    opt = keras_hub.models.OPTBackbone(
        vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=32,
    )
    with pytest.raises(ValueError, match="OPTBackbone cannot be the language model.*GPT2Backbone"):
        keras_ov2.OpenVisionLLaVABackbone(encoder, opt)

    # GPT-2's learned positions: 16 image + 20 text tokens > 32.
    backbone = keras_ov2.OpenVisionLLaVABackbone(encoder, language_backbone("gpt2"))
    x = {
        "images": np.zeros((1, SIZE, SIZE, 3), "float32"),
        "token_ids": np.ones((1, 20), "int32"),
        "padding_mask": np.ones((1, 20), "int32"),
    }
    with pytest.raises(ValueError, match="16 image tokens \\+ 20 text tokens"):
        backbone(x)


# --- Generation ----------------------------------------------------------------


def greedy_loop(model, inputs):
    """Greedy decoding by hand: one full forward pass per new token, the
    argmax of the logits at the last filled position; prompt tokens stay."""
    token_ids = np.array(ops.convert_to_numpy(inputs["token_ids"]))
    prompt = np.array(ops.convert_to_numpy(inputs["padding_mask"]), bool)
    for index in range(prompt.sum(axis=1).min(), token_ids.shape[1]):
        filled = prompt | (np.arange(token_ids.shape[1]) < index)
        step = {"images": inputs["images"], "token_ids": token_ids, "padding_mask": filled}
        logits = model.predict_on_batch(step)
        best = np.argmax(ops.convert_to_numpy(logits)[:, index - 1], axis=-1)
        token_ids[:, index] = np.where(prompt[:, index], token_ids[:, index], best)
    return token_ids


def test_generate_is_greedy_decoding_of_the_model():
    keras.utils.set_random_seed(4)
    model = tiny_llava(with_preprocessor=False)
    data = colour_data(3)
    raw = {"images": data["images"], "prompts": ["what colour?", "colour", "is it red or blue?"]}
    inputs = preprocessor().generate_preprocess(raw, sequence_length=12)
    expected = greedy_loop(model, inputs)
    generated = model.generate(inputs, stop_token_ids=None)
    np.testing.assert_array_equal(generated["token_ids"], expected)

    model.preprocessor = preprocessor()
    texts = model.generate(raw, max_length=12, stop_token_ids=None)
    full = {"token_ids": expected, "padding_mask": np.ones_like(expected, bool)}
    assert texts == model.preprocessor.generate_postprocess(full)
    assert isinstance(model.sampler, keras_hub.samplers.GreedySampler)


def test_overfits_colour_questions_and_answers_them():
    keras.utils.set_random_seed(5)
    model = tiny_llava(with_preprocessor=False)
    data = colour_data(4)
    x, y, sample_weight = preprocessor()(data)
    steps = 40

    def repeat(t):
        return np.concatenate([ops.convert_to_numpy(t)] * steps)

    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(
        keras.tree.map_structure(repeat, x), repeat(y),
        sample_weight=repeat(sample_weight), batch_size=4, verbose=0,
    )
    # An untrained model is at about log(30522) = 10.3.
    loss = ops.convert_to_numpy(model.compute_loss(x, y, model(x), sample_weight))
    assert loss < 0.1, (loss, history.history)
    model.preprocessor = preprocessor()
    answers = model.generate(
        {"images": data["images"], "prompts": data["prompts"]}, max_length=SEQUENCE,
        strip_prompt=True,
    )
    assert answers == data["responses"]


# --- Saving ----------------------------------------------------------------------


def test_config_and_preset_round_trips(tmp_path):
    keras.utils.set_random_seed(6)
    model = tiny_llava("llama", vision_layer=-3)
    data = colour_data(2)
    x = preprocessor()(data)[0]
    expected = ops.convert_to_numpy(model(x))

    restored = keras_ov2.OpenVisionLLaVACausalLM.from_config(model.get_config())
    restored.set_weights(model.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(restored(x)), expected, atol=1e-6)
    assert restored.backbone.vision_layer == -3
    assert not restored.backbone.vision_encoder.trainable

    model.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.CausalLM.from_preset(str(tmp_path))
    assert isinstance(loaded, keras_ov2.OpenVisionLLaVACausalLM)
    assert not loaded.backbone.vision_encoder.trainable
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    prompts = {"images": data["images"], "prompts": data["prompts"]}
    assert loaded.generate(prompts, max_length=12) == model.generate(prompts, max_length=12)
