"""A plain NumPy forward pass of the OpenVision encoder (DESIGN.md §2).

Written from the design text, independently of the Keras layers, so tests can
check the Keras model against the formulas rather than against itself.
Weights are read by variable path from a Keras backbone.
"""

import math

import numpy as np


def sincos_table(grid_h, grid_w, dim):
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / (quarter - 1))
    y, x = np.mgrid[:grid_h, :grid_w]
    x = np.einsum("n,d->nd", x.reshape(-1), omega)
    y = np.einsum("n,d->nd", y.reshape(-1), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1)


def layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu_exact(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def encoder_forward(weights, images, patch, heads, num_layers):
    """weights: {variable path: array}; images: (B, H, W, 3) float64."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    kernel = w["patch_embedding/kernel"]
    batch, height, width, _ = images.shape
    gh, gw = height // patch, width // patch
    images = images[:, : gh * patch, : gw * patch]
    patches = images.reshape(batch, gh, patch, gw, patch, 3)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, gh * gw, -1)
    x = patches @ kernel.reshape(-1, kernel.shape[-1])
    dim = x.shape[-1]
    x = x + sincos_table(gh, gw, dim)
    cls = np.broadcast_to(w["class_token/token"], (batch, 1, dim))
    x = np.concatenate([cls, x], axis=1)
    head_dim = dim // heads
    blocks = []  # (B, 1 + N, D) after each block, CLS first
    for i in range(num_layers):
        p = f"transformer_layer_{i}/"
        h = layer_norm(x, w[p + "attention_norm/gamma"], w[p + "attention_norm/beta"])

        def proj(name, t):
            return t @ w[p + f"attention/{name}/kernel"] + w[p + f"attention/{name}/bias"]

        q, k, v = (
            proj(n, h).reshape(batch, -1, heads, head_dim).transpose(0, 2, 1, 3)
            for n in ("query", "key", "value")
        )
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim)
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits)
        probs = probs / probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, -1, dim)
        x = x + proj("output", attended)
        h = layer_norm(x, w[p + "mlp_norm/gamma"], w[p + "mlp_norm/beta"])
        h = gelu_exact(h @ w[p + "mlp_intermediate/kernel"] + w[p + "mlp_intermediate/bias"])
        x = x + h @ w[p + "mlp_output/kernel"] + w[p + "mlp_output/bias"]
        blocks.append(x)
    tokens = x[:, 1:]
    pooled = layer_norm(
        tokens.mean(1), w["encoder_norm/gamma"], w["encoder_norm/beta"]
    )
    out = {"sequence_output": tokens, "pooled_output": pooled, "blocks": blocks}
    if "head/kernel" in w:
        out["projected_output"] = pooled @ w["head/kernel"]
    return out
