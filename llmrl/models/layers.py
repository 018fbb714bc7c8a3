"""Shared transformer building blocks (pure linen modules).

Every parameter carries logical axis names (`nn.with_logical_partitioning`)
from this vocabulary: "vocab", "embed", "heads", "kv_heads", "head_dim",
"mlp", "norm" (1-D norm scale/bias); axes without a name (the position table's
length axis) are None. The engine's rules map the names onto the mesh.

Parameters are stored in `param_dtype` and cast to the compute `dtype` at use;
norms compute in float32.
"""

import functools
import math
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_exact", "relu", "swiglu", "geglu")


def _normal(std: float, names):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def low_precision(*xs) -> bool:
  """True when an operand is a floating type narrower than float32 (bf16, fp16)."""
  return any(jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32 for x in xs)


def row_major_t(a):
  """a [m, n] -> a.T [n, m] as a row-major copy.

  XLA's CPU pipeline turns a bf16 dot whose operand is a transpose into a
  float32 dot (converting both operands): ~270 instead of ~1000-1400 GFLOP/s
  on a CPU with AMX. Through a flat view behind an optimization barrier the
  transpose has to be materialised, so the dot keeps its bf16 operands. Needs
  the barrier kept (`llmrl.train.step.compiler_options`); without it this is a
  plain transpose.
  """
  t = a.T
  return jax.lax.optimization_barrier(t.reshape(-1)).reshape(t.shape)


def _mm(a, b, out_dtype):
  """a [m, k] @ b [k, n] accumulated in float32, returned in out_dtype."""
  return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _on_cpu_if_low(fast, plain, *args):
  """fast(*args) on CPU for low-precision operands, else plain(*args)."""
  if not low_precision(*args):
    return plain(*args)
  return jax.lax.platform_dependent(*args, cpu=fast, default=plain)


def weight_grad(x2, g2):
  """x2 [rows, in], g2 [rows, out] -> x2^T g2 [in, out]: a weight's gradient.

  On CPU the smaller operand is transposed into a row-major matmul; left to
  itself XLA copies whichever operand its layout pass picks (often the larger:
  the [rows, vocab] logits gradient, the [rows, mlp] MLP gradient). bf16
  operands are transposed with `row_major_t` and accumulate in float32.
  """
  out = jnp.result_type(x2, g2)

  def cpu(x2, g2):
    if low_precision(x2, g2):
      if x2.shape[1] <= g2.shape[1]:
        return _mm(row_major_t(x2), g2, out)
      return _mm(row_major_t(g2), x2, out).T
    if x2.shape[1] <= g2.shape[1]:
      return jax.lax.optimization_barrier(x2.T) @ g2
    return (jax.lax.optimization_barrier(g2.T) @ x2).T

  return jax.lax.platform_dependent(x2, g2, cpu=cpu, default=lambda a, b: a.T @ b)


def _matrix(x, lead: int):
  """x -> 2-D [prod(shape[:lead]), prod(shape[lead:])]."""
  return x.reshape(math.prod(x.shape[:lead]), -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract(x, kernel, in_axes: int):
  """x [..., *in] . kernel [*in, *out] -> [..., *out] (tensordot over in_axes)."""

  def cpu(x, kernel):  # bf16 x bf16 -> f32 on AMX, rounded once
    n_out = kernel.ndim - in_axes
    y = _mm(_matrix(x, x.ndim - in_axes), _matrix(kernel, in_axes), x.dtype)
    return y.reshape(*x.shape[: x.ndim - in_axes], *kernel.shape[kernel.ndim - n_out :])

  return _on_cpu_if_low(cpu, lambda x, k: jnp.tensordot(x, k, axes=in_axes), x, kernel)


def _contract_fwd(x, kernel, in_axes):
  return contract(x, kernel, in_axes), (x, kernel)


def _contract_bwd(in_axes, res, g):
  x, kernel = res
  n_out = kernel.ndim - in_axes

  def plain(g, kernel):
    return jnp.tensordot(g, kernel, axes=(list(range(g.ndim - n_out, g.ndim)),
                                          list(range(in_axes, kernel.ndim))))

  def cpu(g, kernel):  # g [rows, out] @ kernel^T [out, in], materialised row-major
    dx = _mm(_matrix(g, g.ndim - n_out), row_major_t(_matrix(kernel, in_axes)), g.dtype)
    return dx.reshape(x.shape)

  dx = _on_cpu_if_low(cpu, plain, g, kernel)
  n_in = math.prod(kernel.shape[:in_axes])
  dk = weight_grad(x.reshape(-1, n_in), g.reshape(-1, kernel.size // n_in))
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


contract.defvjp(_contract_fwd, _contract_bwd)


@jax.custom_vjp
def tied_logits(x, emb):
  """x [..., embed] . emb [vocab, embed]^T -> logits [..., vocab] (tied output layer)."""

  def cpu(x, emb):  # x [rows, embed] @ emb^T [embed, vocab], materialised row-major
    return _mm(_matrix(x, x.ndim - 1), row_major_t(emb), x.dtype).reshape(*x.shape[:-1], -1)

  return _on_cpu_if_low(cpu, lambda x, e: jnp.einsum("...d,vd->...v", x, e), x, emb)


def _tied_logits_fwd(x, emb):
  return tied_logits(x, emb), (x, emb)


def _tied_logits_bwd(res, g):
  x, emb = res

  def cpu(g, emb):  # g [rows, vocab] @ emb [vocab, embed]
    return _mm(_matrix(g, g.ndim - 1), emb, g.dtype).reshape(*g.shape[:-1], -1)

  dx = _on_cpu_if_low(cpu, lambda g, e: jnp.einsum("...v,vd->...d", g, e), g, emb)
  d = x.shape[-1]
  de = weight_grad(g.reshape(-1, g.shape[-1]), x.reshape(-1, d))  # [vocab, embed]
  return dx, de


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


@jax.custom_vjp
def add_bias(y, bias):
  """y [..., *features] + bias [*features] (cast to y's dtype); for bf16/fp16 y.

  Its gradient sums the rows in float32 as a matmul on CPU.
  """
  return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
  return add_bias(y, bias), bias


def _add_bias_bwd(bias, g):
  rows = g.size // bias.size

  def plain(g2):
    return jnp.sum(g2, axis=0, dtype=jnp.float32)

  def cpu(g2):  # ones [1, rows] @ g2 [rows, n] in float32: XLA's CPU reduction of a
    # converted bf16 gradient is a slow reduce-window (10 ms for [2048, 1536])
    return _mm(jnp.ones((1, rows), g2.dtype), g2, jnp.float32)[0]

  db = _on_cpu_if_low(cpu, plain, g.reshape(rows, bias.size))
  return g, db.reshape(bias.shape).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Dense(nn.Module):
  """Contract the last `in_axes` input axes with a kernel [*in, *features].

  Keeps multi-axis kernels (e.g. q: [embed, heads, head_dim], out:
  [heads, head_dim, embed]) so heads can be sharded on their own axis.
  """

  features: Union[int, Sequence[int]]
  kernel_axes: Sequence[str]
  in_axes: int = 1
  use_bias: bool = False
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [..., *in] -> [..., *features] in `dtype`."""
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    shape = tuple(x.shape[-self.in_axes :]) + features
    kernel = self.param(
      "kernel", _normal(self.init_std, tuple(self.kernel_axes)), shape, self.param_dtype
    )
    y = contract(x.astype(self.dtype), kernel.astype(self.dtype), self.in_axes)  # [..., *features]
    if self.use_bias:
      bias_axes = tuple(self.kernel_axes[self.in_axes :])
      init = nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_axes)
      bias = self.param("bias", init, features, self.param_dtype)
      y = add_bias(y, bias) if low_precision(y) else y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` gives tied output logits."""

  vocab_size: int
  features: int
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
      "embedding",
      _normal(self.init_std, ("vocab", "embed")),
      (self.vocab_size, self.features),
      self.param_dtype,
    )

  def __call__(self, ids):
    """ids int [batch, length] -> [batch, length, embed]."""
    return jnp.take(self.embedding.astype(self.dtype), ids, axis=0)

  def attend(self, x):
    """x [batch, length, embed] -> logits [batch, length, vocab]."""
    return tied_logits(x.astype(self.dtype), self.embedding.astype(self.dtype))


class PositionEmbed(nn.Module):
  """Learned absolute position table [max_len, embed], looked up per token."""

  max_len: int
  features: int
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, positions):
    """positions int [batch, length] -> [batch, length, embed]."""
    table = self.param(
      "embedding",
      _normal(self.init_std, (None, "embed")),
      (self.max_len, self.features),
      self.param_dtype,
    )
    return jnp.take(table.astype(self.dtype), positions, axis=0)


def apply_rope(x, positions, base: float = 10000.0):
  """Rotary position embedding (Su et al. 2021), "rotate half" layout as in HF Llama.

  x [batch, length, heads, head_dim], positions [batch, length] -> same shape.
  Dimension i pairs with i + head_dim/2 and rotates by positions * base^(-2i/head_dim).
  """
  d = x.shape[-1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))  # [d/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, d/2]
  cos = jnp.cos(angles)[:, :, None, :]  # [b, l, 1, d/2]
  sin = jnp.sin(angles)[:, :, None, :]  # [b, l, 1, d/2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # [b, l, h, d/2] each
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # [b, l, h, d]
  return out.astype(x.dtype)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, computed in float32 (scale and optional bias)."""

  eps: float = 1e-5
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [..., embed] -> [..., embed] in `dtype`."""
    d = x.shape[-1]
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      (d,),
      self.param_dtype,
    )
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)
    if self.use_bias:
      bias = self.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        (d,),
        self.param_dtype,
      )
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich 2019) over the last axis, computed in float32."""

  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [..., embed] -> [..., embed] in `dtype`."""
    d = x.shape[-1]
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      (d,),
      self.param_dtype,
    )
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def make_norm(kind: str, eps: float, use_bias: bool, dtype, param_dtype, name: str) -> nn.Module:
  """A LayerNorm or RMSNorm by name ("layernorm" | "rmsnorm")."""
  if kind == "layernorm":
    return LayerNorm(eps=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == "rmsnorm":
    return RMSNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"norm={kind!r} is not one of {NORMS}")


_ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approx = HF "gelu_new"
  "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),  # erf = HF "gelu"
  "relu": jax.nn.relu,
  "swiglu": jax.nn.silu,  # gate activation of SwiGLU (Shazeer 2020)
  "geglu": lambda x: jax.nn.gelu(x, approximate=True),  # gate activation of GeGLU
}


class MLP(nn.Module):
  """Feed-forward block: act(x W_i) W_o, or gated act(x W_gate) * (x W_up) W_o."""

  d_ff: int
  kind: str = "gelu"
  use_bias: bool = True
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [batch, length, embed] -> [batch, length, embed]."""
    if self.kind not in _ACTIVATIONS:
      raise ValueError(f"mlp={self.kind!r} is not one of {MLPS}")
    act = _ACTIVATIONS[self.kind]

    def dense(features, axes, std, name):
      return Dense(
        features,
        axes,
        use_bias=self.use_bias,
        init_std=std,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
      )

    if self.kind in ("swiglu", "geglu"):
      gate = dense(self.d_ff, ("embed", "mlp"), self.init_std, "wi_gate")(x)  # [b, l, mlp]
      up = dense(self.d_ff, ("embed", "mlp"), self.init_std, "wi_up")(x)  # [b, l, mlp]
      h = act(gate) * up
    else:
      h = act(dense(self.d_ff, ("embed", "mlp"), self.init_std, "wi")(x))  # [b, l, mlp]
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), self.out_init_std, "wo")(h)  # [b, l, embed]


def relative_position_bucket(
  relative_position, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
):
  """T5's bucket of each relative position (key index - query index), int32 in [0, num_buckets).

  Bidirectional (encoder): half the buckets for keys before the query, half
  after. Causal (decoder): only keys at or before the query (later ones share
  bucket 0 and are masked anyway). Of each half, the first half of the
  buckets are exact distances 0..max_exact-1, the rest grow logarithmically
  up to max_distance; farther keys share the last bucket. Same float32
  arithmetic as Mesh TensorFlow / transformers' T5Attention._relative_position_bucket.
  """
  n = num_buckets
  rel = jnp.asarray(relative_position, jnp.int32)
  ret = jnp.zeros_like(rel)
  if bidirectional:
    n //= 2
    ret = ret + (rel > 0).astype(jnp.int32) * n
    rel = jnp.abs(rel)
  else:
    rel = -jnp.minimum(rel, 0)
  max_exact = n // 2
  log_ratio = jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / jnp.float32(max_exact))
  log_ratio = log_ratio / jnp.float32(math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * jnp.float32(n - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, n - 1)
  return ret + jnp.where(rel < max_exact, rel, large)


class RelativePositionBias(nn.Module):
  """T5 relative position bias: a learned scalar per (bucket, head) added to the scores.

  One table [num_buckets, heads] per stack, shared by all its layers (T5
  computes it in the first layer and passes it on; llmrl computes it once in
  the stack and hands the same array to every layer).
  """

  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_index, k_index):
    """q_index [lq], k_index [lk] int (absolute token indices) -> bias [1, heads, lq, lk]."""
    table = self.param(
      "embedding",
      _normal(self.init_std, (None, "heads")),
      (self.num_buckets, self.num_heads),
      self.param_dtype,
    )
    rel = k_index[None, :] - q_index[:, None]  # [lq, lk]
    buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
    values = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [lq, lk, heads]
    return jnp.transpose(values, (2, 0, 1))[None].astype(self.dtype)  # [1, heads, lq, lk]


@jax.custom_vjp
def gradient_barrier(x):
  """Identity whose backward pass materialises the incoming gradient.

  On the residual stream between blocks it keeps XLA from fusing the whole
  chain of earlier blocks' norm backward passes into every consumer of the
  residual gradient (on CPU each transposing weight-gradient copy recomputed
  that chain; see BUILD_NOTES "Training step vs PyTorch").
  """
  return x


def _barrier_fwd(x):
  return x, None


def _barrier_bwd(_, g):
  return (jax.lax.optimization_barrier(g),)


gradient_barrier.defvjp(_barrier_fwd, _barrier_bwd)
