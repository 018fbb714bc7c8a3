"""Multi-head attention (MHA / MQA / GQA) with RoPE, segment masks and a KV cache.

Three interchangeable kernels compute softmax(q k^T / sqrt(d)) v, selected by
`impl`:

* "plain":     einsum + softmax; materialises the [lq, lk] score matrix.
* "blockwise": pure-JAX memory-efficient attention: `lax.scan` over key blocks
               with an online (flash-style) softmax and a hand-written
               backward pass (llmrl/models/flash.py): memory linear in length.
* "auto":      "jax" when the program compiles for GPU (cuDNN), "plain" elsewhere;
               the experiment configs' default.
* "jax":       `jax.nn.dot_product_attention`: cuDNN's fused flash attention
               on GPU where cuDNN takes the inputs (see `use_cudnn`), XLA
               otherwise.

Scores and softmax are always float32, whatever the compute dtype.

Masking is described by token indices and segment ids rather than by a dense
mask, so every kernel builds exactly the part of the mask it needs: key j is
visible to query i iff (not causal or k_index[j] <= q_index[i]) and
q_segment[i] == k_segment[j]. Segment id 0 marks padding; padding tokens only
see other padding tokens (and always themselves), so no row is ever empty.
The same rule is the padding mask of bidirectional (encoder) attention:
pass an HF-style attention_mask (1 = token, 0 = pad) as the segment ids.
Segment id SHARED_SEGMENT (-1) marks a shared prefix: its keys are visible
(causally) to every non-padding segment of the row, so the reward model
scores K responses after one copy of their prompt (llmrl.rlhf.reward).

Optional extras used by the encoder families: an additive score `bias`
[batch or 1, heads, lq, lk] (T5's relative position bias), a softmax `scale`
other than head_dim**-0.5 (T5 uses 1.0), and cross-attention (`kv=`: keys and
values from another sequence, e.g. the encoder output, masked by its segment
ids).
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from llmrl.models.flash import (  # noqa: F401
  SHARED_SEGMENT,
  flash_attention,
  mm32,
  segments_visible,
)
from llmrl.models.layers import Dense, apply_rope, low_precision

ATTENTION_IMPLS = ("auto", "plain", "blockwise", "jax")
_NEG = -1e30  # finite "minus infinity" for masked scores (float32)


def make_mask(q_index, k_index, q_segment, k_segment, causal: bool):
  """Boolean visibility mask [batch or 1, 1, lq, lk] (True = may attend).

  q_index: [lq] or [batch, lq] absolute token indices; k_index: [lk].
  q_segment: [batch, lq] or None; k_segment: [batch, lk] or None.
  """
  q_index = jnp.atleast_2d(q_index)  # [b|1, lq]
  mask = jnp.ones((1, q_index.shape[-1], k_index.shape[-1]), bool)  # [1, lq, lk]
  if causal:
    mask = k_index[None, None, :] <= q_index[:, :, None]  # [b|1, lq, lk]
  if q_segment is not None:
    same = segments_visible(q_segment[:, :, None], k_segment[:, None, :])  # [b, lq, lk]
    mask = mask & same
  return mask[:, None]  # [b|1, 1, lq, lk]


def _group(q, num_kv_heads: int):
  """Split query heads into (kv_head, group) so GQA never copies k/v."""
  b, lq, h, d = q.shape
  return q.reshape(b, lq, num_kv_heads, h // num_kv_heads, d)  # [b, lq, kvh, g, d]


def _group_bias(bias, num_kv_heads: int):
  """bias [b|1, h, lq, lk] -> [b|1, kvh, g, lq, lk] float32 (the grouped score layout)."""
  b, h, lq, lk = bias.shape
  return bias.astype(jnp.float32).reshape(b, num_kv_heads, h // num_kv_heads, lq, lk)


def plain_attention(q, k, v, mask, bias=None, scale=None):
  """Reference einsum attention. q [b,lq,h,d], k/v [b,lk,kvh,d], mask [b|1,1,lq,lk].

  bias [b|1, h, lq, lk] is added to the scaled scores; scale defaults to d**-0.5.
  bf16/fp16 inputs take `_plain_low`: the same function with every matmul, forward
  and backward, on low-precision operands accumulating in float32.
  """
  b, lq, h, d = q.shape
  scale = d**-0.5 if scale is None else scale
  qg = _group(q, k.shape[2])  # [b, lq, kvh, g, d]
  gbias = None if bias is None else _group_bias(bias, k.shape[2])  # [b|1, kvh, g, lq, lk]
  if low_precision(q, k, v):
    out = _plain_low(qg, k, v, mask[:, :, None], gbias, scale)  # [b, lq, kvh, g, d]
    return out.reshape(b, lq, h, d)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32)
  scores = scores * scale  # [b, kvh, g, lq, lk] float32
  if gbias is not None:
    scores = scores + gbias
  scores = jnp.where(mask[:, :, None], scores, _NEG)  # mask: [b|1, 1, 1, lq, lk]
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)  # [b, lq, kvh, g, d]
  return out.reshape(b, lq, h, d)  # [b, lq, h, d]


def _plain_low_probs(qg, k, mask, gbias, scale):
  """Softmax probabilities [b, kvh, g, lq, lk] float32 from low-precision q/k."""
  scores = mm32("bqkgd,bskd->bkgqs", qg, k) * scale
  if gbias is not None:
    scores = scores + gbias
  return jax.nn.softmax(jnp.where(mask, scores, _NEG), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _plain_low(qg, k, v, mask, gbias, scale):
  """Plain attention for bf16/fp16: qg [b, lq, kvh, g, d], k/v [b, lk, kvh, d], mask
  [b|1, 1, 1, lq, lk], gbias [b|1, kvh, g, lq, lk] float32 or None -> [b, lq, kvh, g, d].

  Autodiff of the float32 scores would hand the backward float32 cotangents, so its
  matmuls would upcast their operands (on CPU: float32 dots instead of AMX bf16 ones).
  Here all six matmuls read the inputs' dtype and accumulate in float32, as the
  blockwise kernel's backward does.
  """
  return _plain_low_fwd(qg, k, v, mask, gbias, scale)[0]


def _plain_low_fwd(qg, k, v, mask, gbias, scale):
  probs = _plain_low_probs(qg, k, mask, gbias, scale)  # [b, kvh, g, lq, lk] float32
  out = mm32("bkgqs,bskd->bqkgd", probs.astype(v.dtype), v).astype(v.dtype)
  return out, (qg, k, v, mask, gbias, probs, out)


def _plain_low_bwd(scale, res, dout):
  qg, k, v, mask, gbias, p, out = res  # p: float32 probabilities
  lo = v.dtype
  p_lo = p.astype(lo)
  dout = dout.astype(lo)  # [b, lq, kvh, g, d]
  dv = mm32("bkgqs,bqkgd->bskd", p_lo, dout)  # [b, lk, kvh, d]
  dp = mm32("bqkgd,bskd->bkgqs", dout, v)  # [b, kvh, g, lq, lk]
  # softmax backward: ds = p * (dp - sum_j p_j dp_j) = p * (dp - dout . out)
  delta = jnp.einsum("bqkgd,bqkgd->bkgq", dout.astype(jnp.float32), out.astype(jnp.float32))
  ds = p * (dp - delta[..., None])  # d(scores) [b, kvh, g, lq, lk]
  ds_lo = ds.astype(lo)
  dq = (mm32("bkgqs,bskd->bqkgd", ds_lo, k) * scale).astype(qg.dtype)
  dk = (mm32("bkgqs,bqkgd->bskd", ds_lo, qg) * scale).astype(k.dtype)
  dbias = None
  if gbias is not None:
    dbias = ds.sum(0, keepdims=True) if gbias.shape[0] == 1 else ds
  return dq, dk, dv.astype(v.dtype), None, dbias


_plain_low.defvjp(_plain_low_fwd, _plain_low_bwd)


def blockwise_attention(
  q, k, v, q_index, k_index, q_segment, k_segment, causal, block_size, scale=None, bias=None
):
  """Memory-efficient attention: online softmax over key blocks (lax.scan).

  Peak memory is O(lq * block_size) per head instead of O(lq * lk), in the
  backward pass too: llmrl.models.flash has a hand-written flash-style VJP
  that saves only the output and log-sum-exp and recomputes block scores.
  bias [b|1, h, lq, lk] (T5's relative position bias) is cut into key blocks
  and added to each block's scores; it is O(lq * lk) itself, so with a bias
  only the activations (not the bias) stay linear in length.
  """
  b, lq, h, d = q.shape
  lk, kvh = k.shape[1], k.shape[2]
  blk = min(block_size, lk)
  nblk = -(-lk // blk)
  pad = nblk * blk - lk
  valid = jnp.arange(nblk * blk) < lk  # [lk_pad]
  k_index = jnp.pad(k_index, (0, pad))  # [lk_pad]
  k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))  # [b, lk_pad, kvh, d]
  v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))  # [b, lk_pad, kvh, d]
  if k_segment is None:
    k_segment = jnp.zeros((b, lk), jnp.int32)
    q_segment_ = jnp.zeros((b, lq), jnp.int32)
  else:
    q_segment_ = q_segment
  k_segment = jnp.pad(k_segment, ((0, 0), (0, pad)))  # [b, lk_pad]

  def blocks(x):  # [b, lk_pad, ...] -> [nblk, b, blk, ...]
    return jnp.moveaxis(x.reshape(b, nblk, blk, *x.shape[2:]), 1, 0)

  xs = (
    blocks(k),  # [nblk, b, blk, kvh, d]
    blocks(v),  # [nblk, b, blk, kvh, d]
    k_index.reshape(nblk, blk),  # [nblk, blk]
    valid.reshape(nblk, blk),  # [nblk, blk]
    blocks(k_segment),  # [nblk, b, blk]
    None,
  )
  if bias is not None:
    bg = jnp.pad(_group_bias(bias, kvh), ((0, 0),) * 4 + ((0, pad),))  # [b|1, kvh, g, lq, lk_pad]
    bg = bg.reshape(*bg.shape[:4], nblk, blk)  # [b|1, kvh, g, lq, nblk, blk]
    xs = xs[:-1] + (jnp.moveaxis(bg, 4, 0),)  # [nblk, b|1, kvh, g, lq, blk]
  scale = d**-0.5 if scale is None else scale
  qg = _group(q, kvh) * jnp.asarray(scale, q.dtype)  # [b, lq, kvh, g, d]
  out = flash_attention(qg, *xs, q_index, q_segment_, causal)  # [b, kvh, g, lq, d]
  out = jnp.transpose(out, (0, 3, 1, 2, 4))  # [b, lq, kvh, g, d]
  return out.reshape(b, lq, h, d).astype(v.dtype)  # [b, lq, h, d]


def use_cudnn(q, k, bias, platform: str, masked: bool) -> bool:
  """Whether the "jax" kernel asks for cuDNN's fused attention: on GPU, for bf16/fp16
  self-attention over whole sequences (training, prefill) with head_dim a multiple of 8
  up to 128 and no score bias. A mask (packed or padded rows; jax hands it to cuDNN as a
  bias) also needs an even length. Everything else (CPU, float32, decode steps, T5's
  relative bias) takes `jax.nn.dot_product_attention`'s XLA implementation.

  q [b, lq, h, d], k [b, lk, kvh, d]; platform: the backend the program compiles for;
  masked: whether a mask tensor goes in (False for pure causal attention).
  """
  d = q.shape[-1]
  return (
    platform == "gpu"
    and q.dtype in (jnp.bfloat16, jnp.float16)
    and k.dtype == q.dtype
    and d % 8 == 0
    and d <= 128
    and q.shape[1] == k.shape[1]
    and bias is None
    and not (masked and q.shape[1] % 2)
  )


def resolve_impl(impl: str, platform: str) -> str:
  """The kernel `impl` names on `platform`: "auto" is "jax" on GPU (cuDNN's fused attention
  where it applies, see `use_cudnn`) and "plain" elsewhere; other names are themselves."""
  if impl == "auto":
    return "jax" if platform == "gpu" else "plain"
  return impl


def jax_attention(q, k, v, mask, causal_only: bool, bias=None, scale=None):
  """`jax.nn.dot_product_attention`; pure causal masks use `is_causal` (no mask tensor), and
  cuDNN's fused kernel is requested on GPU where it applies (`use_cudnn`).

  The platform is the default backend at trace time.
  """
  impl = "cudnn" if use_cudnn(q, k, bias, jax.default_backend(), not causal_only) else None
  if bias is not None:
    bias = bias.astype(jnp.float32)  # [b|1, h, lq, lk]
  if causal_only:
    return jax.nn.dot_product_attention(
      q, k, v, bias=bias, scale=scale, is_causal=True, implementation=impl
    )
  return jax.nn.dot_product_attention(
    q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl
  )


def attend(
  q,
  k,
  v,
  q_index,
  k_index,
  q_segment,
  k_segment,
  *,
  causal,
  impl,
  block_size,
  bias=None,
  scale=None,
):
  """Dispatch to one of the kernels; all return [batch, lq, heads, head_dim].

  bias: optional [batch or 1, heads, lq, lk] added to the scores; scale:
  multiplier of q.k (None = head_dim**-0.5).
  """
  impl = resolve_impl(impl, jax.default_backend())
  if impl == "blockwise":
    return blockwise_attention(
      q, k, v, q_index, k_index, q_segment, k_segment, causal, block_size, scale, bias
    )
  mask = make_mask(q_index, k_index, q_segment, k_segment, causal)
  if impl == "plain":
    return plain_attention(q, k, v, mask, bias, scale)
  if impl == "jax":
    causal_only = causal and q_segment is None and q.shape[1] == k.shape[1]
    return jax_attention(q, k, v, mask, causal_only, bias, scale)
  raise ValueError(f"attention_impl={impl!r} is not one of {ATTENTION_IMPLS}")


class Attention(nn.Module):
  """Self- or cross-attention with separate q/k/v kernels [embed, heads, head_dim].

  Cross-attention: pass `kv` [batch, lk, embed] (e.g. the encoder output) and
  its `kv_segment_ids` (0 = padding); queries see the keys of their own
  segment (query segment ids default to 1, so with an HF attention_mask every
  query sees every non-padding key). Cross-attention never uses the cache or
  RoPE; build it with causal=False.

  In `decode` mode keys/values are written into a preallocated cache
  (collection "cache": cached_key/cached_value [batch, max_len, kv_heads,
  head_dim], cached_segment [batch, max_len], cache_index []) at
  cache_index, and the queries attend over the whole cache. A call may
  carry one token or a whole prompt chunk (prefill). The first call (during
  `init`) only creates the cache.
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  max_len: int
  use_bias: bool = False
  rope_base: Optional[float] = None  # None: no rotary embedding
  causal: bool = True
  impl: str = "plain"
  block_size: int = 128
  decode: bool = False
  cache_layout: str = "length_major"  # KV cache [b, len, kvh, d]; "head_major": [b, kvh, len, d]
  init_std: float = 0.02
  out_init_std: float = 0.02
  query_init_std: Optional[float] = None  # None: init_std (T5 scales queries by head_dim**-0.5)
  scale: Optional[float] = None  # multiplier of q.k; None: head_dim**-0.5 (T5: 1.0)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _proj(self, heads, heads_axis, name, std=None):
    return Dense(
      features=(heads, self.head_dim),
      kernel_axes=("embed", heads_axis, "head_dim"),
      use_bias=self.use_bias,
      init_std=self.init_std if std is None else std,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  @nn.compact
  def __call__(self, x, positions, segment_ids=None, kv=None, kv_segment_ids=None, bias=None):
    """x [batch, length, embed], positions [batch, length] -> [batch, length, embed].

    kv [batch, lk, embed]: cross-attention over kv (kv_segment_ids [batch, lk]).
    bias [batch or 1, heads, length, lk] float: added to the attention scores
    (lk = the cache length in decode mode).
    """
    b, length, _ = x.shape
    cross = kv is not None
    kv = x if kv is None else kv
    q = self._proj(self.num_heads, "heads", "query", self.query_init_std)(x)  # [b, l, h, d]
    k = self._proj(self.num_kv_heads, "kv_heads", "key")(kv)  # [b, lk, kvh, d]
    v = self._proj(self.num_kv_heads, "kv_heads", "value")(kv)  # [b, lk, kvh, d]
    if self.rope_base is not None and not cross:
      q = apply_rope(q, positions, self.rope_base)
      k = apply_rope(k, positions, self.rope_base)
    q = nn.with_logical_constraint(q, ("act_batch", "act_length", "act_heads", "act_head_dim"))
    k = nn.with_logical_constraint(k, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
    v = nn.with_logical_constraint(v, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))

    q_index = jnp.arange(length)  # [l]
    k_index = jnp.arange(k.shape[1])  # [lk]
    q_seg, k_seg = segment_ids, segment_ids
    if cross:
      q_seg, k_seg = segment_ids, kv_segment_ids
      if (q_seg is None) != (k_seg is None):
        ones = jnp.ones((b, length if q_seg is None else k.shape[1]), jnp.int32)
        q_seg, k_seg = (ones, k_seg) if q_seg is None else (q_seg, ones)
    elif self.decode:
      q_index, k_index, k, v, q_seg, k_seg = self._update_cache(k, v, segment_ids)

    if self.decode and self.cache_layout == "beam" and not cross:
      # k_index is the beam cache's cached_parent table here (see _update_beam_cache)
      out = beam_cache_attention(q, k, v, k_index, q_index, q_seg, k_seg, self.scale)
    else:
      out = attend(
        q,
        k,
        v,
        q_index,
        k_index,
        q_seg,
        k_seg,
        causal=self.causal,
        impl=self.impl,
        block_size=self.block_size,
        bias=bias,
        scale=self.scale,
      )  # [b, l, h, d]
    return Dense(
      features=x.shape[-1],
      in_axes=2,
      kernel_axes=("heads", "head_dim", "embed"),
      use_bias=self.use_bias,
      init_std=self.out_init_std,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="out",
    )(out)  # [b, l, embed]

  def _update_cache(self, k, v, segment_ids):
    """Write this chunk's k/v at cache_index; return what the queries attend over."""
    b, length = k.shape[:2]
    if segment_ids is None:
      segment_ids = jnp.ones((b, length), jnp.int32)
    if self.cache_layout == "beam":
      return self._update_beam_cache(k, v, segment_ids)
    initialized = self.has_variable("cache", "cached_key")
    # head_major stores [b, kvh, len, d]: the attention einsums then read the
    # cache in place instead of transposing all of it at every decoding step.
    heads_first = self.cache_layout == "head_major"
    shape = (b, self.max_len, self.num_kv_heads, self.head_dim)
    if heads_first:
      shape = (b, self.num_kv_heads, self.max_len, self.head_dim)
    ck = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
    cs = self.variable("cache", "cached_segment", jnp.zeros, (b, self.max_len), jnp.int32)
    ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    q_index = jnp.arange(length)
    if not initialized:  # init: create the cache, attend within the chunk
      return q_index, q_index, k, v, segment_ids, segment_ids
    i = ci.value
    if heads_first:
      k, v, at = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), (0, 0, i, 0)  # [b, kvh, l, d]
    else:
      at = (0, i, 0, 0)
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), at)
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), at)
    cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids.astype(jnp.int32), (0, i))
    ci.value = i + length
    keys, values = ck.value, cv.value
    if heads_first:  # back to [b, len, kvh, d] for the kernels; XLA folds the two transposes
      keys, values = jnp.swapaxes(keys, 1, 2), jnp.swapaxes(values, 1, 2)
    k_index = jnp.arange(keys.shape[1])  # [cache_len]: max_len, or shorter if the caller sized it
    return i + q_index, k_index, keys, values, segment_ids, cs.value

  def _update_beam_cache(self, k, v, segment_ids):
    """Beam-search cache ("beam" layout): write one step's k/v per beam, never reorder.

    The cache (made by llmrl.decoding from a prefilled head_major cache, not
    by init) holds cached_value [prompts, kvh, len * beams, d] (slot s of beam
    j at s * beams + j, written by beam j) and cached_key transposed [prompts,
    kvh, d, len * beams] (the score matmul then reads it in place); cached_parent
    [rows, len] says, for row = prompt * beams + beam, which beam of its
    prompt wrote the key/value of its own history at each slot (0 for the
    shared prompt slots). The decoding loop reorders only cached_parent when
    beams change parents. Returns (q_index, cached_parent, keys, values,
    q_segment, k_segment) for `beam_cache_attention`.
    """
    b, length = k.shape[:2]
    if not self.has_variable("cache", "cached_key"):
      raise ValueError(
        "cache_layout='beam' has no cache to create: llmrl.decoding builds it from a prefilled "
        "head_major cache; prefill with cache_layout='head_major'"
      )
    if length != 1:
      raise ValueError(f"cache_layout='beam' decodes one token per call, got {length}")
    ck = self.variable("cache", "cached_key", None)
    cv = self.variable("cache", "cached_value", None)
    cs = self.variable("cache", "cached_segment", None)
    cp = self.variable("cache", "cached_parent", None)
    ci = self.variable("cache", "cache_index", None)
    prompts, beams = ck.value.shape[0], b // ck.value.shape[0]
    i = ci.value

    def put(cache, x, keys):  # x [rows, 1, kvh, d] -> cache at slot i
      x = jnp.swapaxes(x.reshape(prompts, beams, self.num_kv_heads, self.head_dim), 1, 2)
      at = (0, 0, i * beams, 0)  # values [prompts, kvh, len * beams, d]
      if keys:  # keys [prompts, kvh, d, len * beams]
        x, at = jnp.swapaxes(x, 2, 3), (0, 0, 0, i * beams)
      return jax.lax.dynamic_update_slice(cache, x.astype(cache.dtype), at)

    ck.value, cv.value = put(ck.value, k, True), put(cv.value, v, False)
    cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids.astype(jnp.int32), (0, i))
    own = (jnp.arange(b, dtype=jnp.int32) % beams)[:, None]  # [rows, 1]: rows write their beam
    cp.value = jax.lax.dynamic_update_slice(cp.value, own, (0, i))
    ci.value = i + 1
    return i + jnp.arange(1), cp.value, ck.value, cv.value, segment_ids, cs.value


def beam_cache_attention(q, keys, values, parent, q_index, q_segment, k_segment, scale=None):
  """One decoding step of attention over a beam cache that is never reordered.

  q [rows, 1, h, d] (row = prompt * beams + beam); values [prompts, kvh,
  len * beams, d] (slot s of beam j at s * beams + j), keys the same but
  transposed [prompts, kvh, d, len * beams]; parent [rows, len]: the
  beam of the row's prompt whose keys/values are the row's history at each
  slot. Every query is scored against all beams' keys of its prompt in one
  batched matmul (no gather); keys of other beams than the slot's parent are
  masked, so the softmax and the values matmul see exactly the row's history.
  q_index [1]: the query's slot; segments [rows, 1] / [rows, len] as in
  `make_mask`.
  """
  rows, _, h, d = q.shape
  prompts, kvh = keys.shape[:2]
  beams, length = rows // prompts, parent.shape[1]
  g = h // kvh
  scale = d**-0.5 if scale is None else scale
  qg = jnp.swapaxes(q.reshape(prompts, beams, kvh, g, d), 1, 2)  # [p, kvh, k, g, d]
  qg = qg.reshape(prompts, kvh, beams * g, d)
  scores = jnp.einsum(
    "bnqd,bnds->bnqs", qg, keys, preferred_element_type=jnp.float32
  )  # [p, kvh, k * g, len * k]
  scores = scores.reshape(prompts, kvh, beams, g, length * beams) * scale
  visible = (k_segment == q_segment) & (jnp.arange(length)[None] <= q_index[0])  # [rows, len]
  own = parent[:, :, None] == jnp.arange(beams)[None, None, :]  # [rows, len, k]
  visible = (own & visible[:, :, None]).reshape(prompts, 1, beams, 1, length * beams)
  probs = jax.nn.softmax(jnp.where(visible, scores, _NEG), axis=-1)  # [p, kvh, k, g, len * k]
  probs = probs.reshape(prompts, kvh, beams * g, length * beams).astype(values.dtype)
  out = jnp.einsum("bnqs,bnsd->bnqd", probs, values)  # [p, kvh, k * g, d]
  out = jnp.swapaxes(out.reshape(prompts, kvh, beams, g, d), 1, 2)  # [p, k, kvh, g, d]
  return out.reshape(rows, 1, h, d)
