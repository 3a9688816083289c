"""Mixed precision for the built-in models: bf16 matmul inputs, float32 everything else.

``precision="bf16"`` rounds the two inputs of every matmul (dense layers, the gates of LSTM and
GRU cells, convolutions run as patches @ kernel) to bfloat16 and accumulates their products in
float32; the parameters, the optimizer state, the activations between layers, the loss and the
gradients stay float32. The backward matmuls do the same (the cotangent is rounded to bf16 as
well), through a custom VJP: left to autodiff, the two gradient matmuls would multiply a float32
cotangent by a bf16 operand and miss the bf16 kernels.

This is the policy of mixed-precision training on TPUs and GPUs, and the one CPUs with AMX or
AVX-512 BF16 run fastest: bf16 x bf16 products with float32 results.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

PRECISIONS = ("float32", "bf16")


@jax.custom_vjp
def bf16_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` (``a [..., n]``, ``b [n, m]``) from bf16-rounded inputs, a float32 result."""
    return _dot(a, b)


def to_bf16(x: jax.Array) -> jax.Array:
    """``x.astype(bfloat16)`` (round to nearest even) by integer arithmetic on the bits, which
    XLA's CPU backend runs about twice as fast as its conversion."""
    if x.dtype != jnp.float32:
        return x.astype(jnp.bfloat16)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    rounded = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1))) >> 16
    return jax.lax.bitcast_convert_type(rounded.astype(jnp.uint16), jnp.bfloat16)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(to_bf16(a), to_bf16(b), preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(a, b):
    return _dot(a, b), (to_bf16(a), to_bf16(b))


def _bf16_matmul_bwd(residuals, grad):
    a, b = residuals
    grad = to_bf16(grad)
    grad_a = _dot(grad, b.T)
    flat_a, flat_grad = a.reshape(-1, a.shape[-1]), grad.reshape(-1, grad.shape[-1])
    return grad_a, _dot(flat_a.T, flat_grad)


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def matmul(a: jax.Array, b: jax.Array, precision: str) -> jax.Array:
    """``a @ b`` in ``precision`` (one of :data:`PRECISIONS`)."""
    return bf16_matmul(a, b) if precision == "bf16" else a @ b


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **unused):
    """``nnx.Linear``'s contraction (the input's last axis with the kernel's first) in bf16."""
    del precision, unused
    (contract_lhs, contract_rhs), batch = dimension_numbers
    if tuple(contract_lhs) != (lhs.ndim - 1,) or tuple(contract_rhs) != (0,) or batch != ((), ()):
        raise NotImplementedError(
            f"a bf16 dense layer contracts x[..., n] @ W[n, m], not {dimension_numbers}"
        )
    return bf16_matmul(lhs, rhs)


def _bf16_conv(lhs, rhs, *args, **kwargs):
    """``nnx.Conv``'s convolution (off the CPU) from bf16 inputs with a float32 result."""
    kwargs["preferred_element_type"] = jnp.float32
    return jax.lax.conv_general_dilated(to_bf16(lhs), to_bf16(rhs), *args, **kwargs)


def apply_precision(module: nnx.Module, precision: str) -> nnx.Module:
    """``module`` with every ``nnx.Linear`` and ``nnx.Conv`` in it (also inside LSTM and GRU
    cells) contracting in ``precision``, and every module of ours with a ``matmul_precision``
    attribute (the CNN's convolutions as matmuls) set to it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if precision == "float32":
        return module
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Linear):
            node.dot_general = _dense_dot_general
        elif isinstance(node, nnx.Conv):
            node.conv_general_dilated = _bf16_conv
        if hasattr(node, "matmul_precision"):
            node.matmul_precision = precision
    return module
