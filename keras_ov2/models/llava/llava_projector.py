"""LLaVA-1.5's vision-language connector."""

import keras


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVisionLLaVAProjector(keras.layers.Layer):
    """LLaVA-1.5's `mlp2x_gelu`: Dense -> exact GELU -> Dense, both to the
    language model's width, so vision tokens become word-embedding-like
    inputs. The layer names follow Hugging Face's `LlavaMultiModalProjector`
    (`linear_1`, `linear_2`), so converted weights map one to one.

    Args:
        hidden_dim: int, the language model's embedding width.
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.linear_1 = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="linear_1"
        )
        self.linear_2 = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="linear_2"
        )

    def build(self, input_shape):
        self.linear_1.build(input_shape)
        self.linear_2.build((*input_shape[:-1], self.hidden_dim))

    def call(self, inputs):
        hidden = keras.activations.gelu(self.linear_1(inputs), approximate=False)
        return self.linear_2(hidden)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config["hidden_dim"] = self.hidden_dim
        return config
