"""PyTorch reference of the Conv-3 x N Diversity Training (GAL) step, for the speed comparison
in ``bench.py`` (issue 10). Not part of the package; needs ``pip install -e '.[bench]'``.

What it computes is the same function as ``tf_divtrain`` (``tests/test_torch_gal.py`` copies the
Keras weights into these modules and checks input gradients, CE, GAL, loss and every parameter
gradient against ``tf_divtrain.gal`` / ``training.per_example_objective``):

* Conv-3 (paper Table 1, as ``tf_divtrain.models.conv3``): 3x3 'valid' (unpadded) convolutions
  C32-C64-M-C128-M, FC1024, FC10, LeakyReLU(0.2) after every conv and the hidden dense layer,
  2x2 max-pooling, Glorot-uniform weights and zero biases. Layout: PyTorch's default contiguous
  **NCHW** (what the peers' GAL baselines use); ``memory_format="channels_last"`` is an option
  (``bench.py --torch_layout``), measured in ``benchmarks/history/FINDINGS.md``.
* One step, the way the DVERGE / TRS repositories' GAL baselines train, with the per-member
  gradients fused into ONE autograd call (as our ``gal.member_input_gradients`` does): every member
  gets its own leaf view of ``x``; the summed per-example member cross-entropies are differentiated
  w.r.t. all views by one ``torch.autograd.grad(..., create_graph=True)``; pairwise cosines of
  the flattened gradients (unit vectors, as ``tf.math.l2_normalize``) -> per-example
  ``logsumexp`` over pairs a < b (Eq 8); loss = mean over the batch of (mean member CE +
  0.5 * GAL) (Eq 9); ``backward``; Adam(lr 1e-3, eps 1e-7 as Keras) ``step``.
  (DVERGE's ``train/train_gal.py`` calls ``autograd.grad`` once per member and runs a second
  forward for the CE term, i.e. more work than this.)
* ``precision="bf16"``: the forward and the inner input-gradient backward run under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``; cosines, GAL and the loss in float32, the
  outer backward outside the autocast region (PyTorch's recommended pattern). Parameters and
  Adam state stay float32.
* ``mode="plain"``: mean member CE only (no input gradients), for reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# 0.2 as TF applies it: the LeakyRelu op's alpha attribute is a float32 (0.2000000029802...). In
# float32 this is the same number as 0.2; in the float64 equality test it makes both sides equal.
LEAKY_SLOPE = float(np.float32(0.2))
PRECISIONS = ("fp32", "bf16")


def conv_net(filters_and_pools, input_shape, num_classes: int = 10) -> nn.Sequential:
    """``tf_divtrain.models._conv_net`` in PyTorch: 3x3 'valid' convs (+ LeakyReLU), "M" = 2x2
    max-pool, then FC1024 + LeakyReLU, FC ``num_classes``. NHWC ``input_shape``; NCHW module."""
    h, w, c = input_shape
    layers = []
    for item in filters_and_pools:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        else:
            layers += [nn.Conv2d(c, item, 3), nn.LeakyReLU(LEAKY_SLOPE)]
            h, w, c = h - 2, w - 2, item
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, 1024),
                          nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(1024, num_classes))
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)  # = Keras GlorotUniform (same fans for convs)
            nn.init.zeros_(m.bias)
    return model


def conv3(input_shape, num_classes: int = 10) -> nn.Sequential:
    """Conv-3 (C32-C64-M-C128-M-FC1024) for NHWC ``input_shape`` = (H, W, C); NCHW module."""
    return conv_net([32, 64, "M", 128, "M"], input_shape, num_classes)


def conv4(input_shape, num_classes: int = 10) -> nn.Sequential:
    """Conv-4 (C32-C64-C128-M-C128-M-FC1024), as ``tf_divtrain.models.conv4``."""
    return conv_net([32, 64, 128, "M", 128, "M"], input_shape, num_classes)


MODELS = {"conv3": conv3, "conv4": conv4}


def build_ensemble(n: int, input_shape, num_classes: int = 10, seed: int = 0,
                   memory_format: str = "contiguous", model: str = "conv3"):
    torch.manual_seed(seed)
    members = [MODELS[model](input_shape, num_classes) for _ in range(n)]
    if memory_format == "channels_last":
        members = [m.to(memory_format=torch.channels_last) for m in members]
    elif memory_format != "contiguous":
        raise ValueError(f"memory_format must be contiguous or channels_last, got {memory_format!r}")
    return members


def load_keras_weights(member: nn.Sequential, keras_model) -> None:
    """Copies a ``tf_divtrain.models.conv3`` Keras model's weights into ``member`` (in place).

    Conv kernels [kh, kw, cin, cout] -> [cout, cin, kh, kw]. The first dense layer follows a
    Flatten, whose element order is (h, w, c) in Keras (NHWC) and (c, h, w) here (NCHW): its
    rows are permuted accordingly, so both models compute the same function.
    """
    import keras  # local: the torch side does not need TF otherwise

    k_layers = [l for l in keras_model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    t_layers = [m for m in member if isinstance(m, (nn.Conv2d, nn.Linear))]
    if len(k_layers) != len(t_layers):
        raise ValueError(f"{len(k_layers)} Keras vs {len(t_layers)} torch weight layers")
    flat_shape = None
    for kl in keras_model.layers:
        if isinstance(kl, keras.layers.Flatten):
            flat_shape = tuple(kl.input.shape[1:])  # (h, w, c)
    first_dense = True
    with torch.no_grad():
        for kl, tl in zip(k_layers, t_layers):
            kernel, bias = (v.numpy() for v in (kl.kernel, kl.bias))
            if isinstance(tl, nn.Conv2d):
                w = kernel.transpose(3, 2, 0, 1)
            elif first_dense:
                h, w_, c = flat_shape
                w = kernel.reshape(h, w_, c, -1).transpose(2, 0, 1, 3).reshape(h * w_ * c, -1).T
                first_dense = False
            else:
                w = kernel.T
            if tuple(tl.weight.shape) != w.shape:
                raise ValueError(f"shape mismatch {tuple(tl.weight.shape)} vs {w.shape}")
            tl.weight.copy_(torch.from_numpy(w.copy()))
            tl.bias.copy_(torch.from_numpy(bias.copy()))


def to_torch_images(x_nhwc, memory_format: str = "contiguous") -> torch.Tensor:
    """NHWC float array / tf.Tensor -> NCHW torch tensor (optionally channels_last storage).

    float32 unless the input is float64 (kept, for the float64 equality test)."""
    x = np.asarray(x_nhwc)
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64 if x.dtype == np.float64 else np.float32))
    x = x.permute(0, 3, 1, 2)
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def _autocast(precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t  # float64 stays


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B, N, C], [B] -> per-example, per-member CE [B, N] (float32, or float64 for f64 models)."""
    b, n, c = logits.shape
    return F.cross_entropy(_at_least_fp32(logits.reshape(b * n, c)), y.repeat_interleave(n),
                           reduction="none").view(b, n)


def member_input_gradients(members, x: torch.Tensor, y: torch.Tensor, create_graph: bool = True):
    """grad_x CE_i for every member i from ONE ``torch.autograd.grad`` call.

    Returns (grads [B, N, D] in x's dtype, logits [B, N, C], ce [B, N]); logits/CE come from the same
    forward pass (reused for the CE term of the loss).
    """
    views = [x.detach().requires_grad_(True) for _ in members]  # one leaf per member, no copy
    logits = torch.stack([m(v) for m, v in zip(members, views)], dim=1)
    ce = member_cross_entropy(logits, y)
    grads = torch.autograd.grad(ce.sum(), views, create_graph=create_graph)
    grads = _at_least_fp32(torch.stack([g.reshape(g.shape[0], -1) for g in grads], dim=1))
    return grads, logits, ce


def pair_cosines(grads: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> cosines of pairs a < b [B, N(N-1)/2] (row-major pair order, as gal.py).

    ``F.normalize(eps=1e-6)`` divides by max(|g|, 1e-6) = sqrt(max(|g|^2, 1e-12)), exactly
    ``tf.math.l2_normalize(epsilon=1e-12)``.
    """
    n = grads.shape[1]
    unit = F.normalize(grads, dim=-1, eps=1e-6)
    cos = unit @ unit.transpose(1, 2)
    a, b = torch.triu_indices(n, n, offset=1)
    return cos[:, a, b]


def per_example_objective(members, x, y, mode: str = "gal", gal_lambda: float = 0.5,
                          precision: str = "fp32") -> dict:
    """Per-example tensors of Eq 9 (``mode="gal"``) or of the plain mean member CE."""
    if mode == "gal":
        with _autocast(precision):
            grads, logits, ce = member_input_gradients(members, x, y)
        pairs = pair_cosines(grads)
        gal = torch.logsumexp(pairs, dim=-1)
        return {"loss": ce.mean(dim=-1) + gal_lambda * gal, "ce": ce, "gal": gal,
                "coherence": pairs.max(dim=-1).values, "logits": logits, "grads": grads}
    if mode != "plain":
        raise ValueError(f"mode must be gal or plain, got {mode!r}")
    with _autocast(precision):
        logits = torch.stack([m(x) for m in members], dim=1)
        ce = member_cross_entropy(logits, y)
    return {"loss": ce.mean(dim=-1), "ce": ce, "logits": logits}


class TorchStep:
    """One optimisation step of an N-member ensemble: ``step(x, y)`` -> loss (Python float)."""

    def __init__(self, members, mode: str = "gal", precision: str = "fp32", lr: float = 1e-3,
                 gal_lambda: float = 0.5):
        _autocast(precision)  # validates
        self.members, self.mode, self.precision, self.gal_lambda = members, mode, precision, gal_lambda
        for m in members:
            m.train()
        self.params = [p for m in members for p in m.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=lr, eps=1e-7)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        out = per_example_objective(self.members, x, y, self.mode, self.gal_lambda, self.precision)
        loss = out["loss"].mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())  # CPU ops are synchronous; this also ends the step
