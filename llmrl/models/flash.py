"""Flash-style blockwise attention in pure JAX with a hand-written backward pass.

The forward pass scans over key blocks with an online softmax and keeps only
the output and the per-row log-sum-exp; the backward pass scans the key
blocks again, recomputing each [lq, block] probability tile from the saved
log-sum-exp (Dao et al. 2022, "FlashAttention", Algorithm 2 in JAX). Memory is
linear in the sequence length for a fixed block size: no [lq, lk] matrix and
no per-block copies of the accumulator are ever stored.

Layout (GQA-aware, query heads grouped under their key/value head):
  qg   [b, lq, kvh, g, d]        queries, already scaled by d**-0.5
  kb   [nblk, b, blk, kvh, d]    key blocks;  vb likewise
  kib  [nblk, blk]               key token indices;  vab [nblk, blk] valid (not padding)
  ksb  [nblk, b, blk]            key segment ids
  bb   [nblk, b|1, kvh, g, lq, blk] float32 additive score bias (e.g. T5's relative
                                 position bias), or None; its gradient is returned too
  q_index [lq] or [b, lq], q_segment [b, lq]
Output [b, kvh, g, lq, d] float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = -1e30
SHARED_SEGMENT = -1  # a prefix every non-padding segment of its row attends to


def segments_visible(q_segment, k_segment):
  """Segment part of every kernel's mask: same segment, or a shared-prefix key
  (SHARED_SEGMENT) seen by a non-padding query. Broadcasts [..., lq, 1] vs [..., 1, lk]."""
  return (q_segment == k_segment) | ((k_segment == SHARED_SEGMENT) & (q_segment != 0))


def _mask(q_index, q_segment, kib, vab, ksb, causal):
  """Visibility of one key block: [b|1, 1, 1, lq, blk] bool."""
  q_index = jnp.atleast_2d(q_index)  # [b|1, lq]
  mask = vab[None, None, :]  # [1, 1, blk]
  if causal:
    mask = mask & (kib[None, None, :] <= q_index[:, :, None])  # [b|1, lq, blk]
  mask = mask & segments_visible(q_segment[:, :, None], ksb[:, None, :])  # [b, lq, blk]
  return mask[:, None, None]  # [b, 1, 1, lq, blk]


# einsum accumulating (and returning) float32, whatever the operands' dtype: bf16
# operands stay bf16 (AMX on CPU). Shared with the plain kernel's bf16 path.
mm32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)


def _scores(qg, kb_j):
  return mm32("bqkgd,bskd->bkgqs", qg, kb_j)  # [b, kvh, g, lq, blk]


def _block_scores(qg, kb_j, bb_j):
  s = _scores(qg, kb_j)  # [b, kvh, g, lq, blk] float32
  return s if bb_j is None else s + bb_j


def _forward(qg, kb, vb, kib, vab, ksb, bb, q_index, q_segment, causal):
  b, lq, kvh, g, d = qg.shape

  def body(carry, x):
    m, l, acc = carry  # [b,kvh,g,lq], [b,kvh,g,lq], [b,kvh,g,lq,d]
    kb_j, vb_j, ki_j, va_j, ks_j, bb_j = x
    mask = _mask(q_index, q_segment, ki_j, va_j, ks_j, causal)
    s = jnp.where(mask, _block_scores(qg, kb_j, bb_j), _NEG)  # [b, kvh, g, lq, blk]
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
    alpha = jnp.exp(m - m_new)
    l = alpha * l + p.sum(-1)
    pv = mm32("bkgqs,bskd->bkgqd", p.astype(vb_j.dtype), vb_j)
    return (m_new, l, alpha[..., None] * acc + pv), None

  init = (jnp.full((b, kvh, g, lq), _NEG, jnp.float32),
          jnp.zeros((b, kvh, g, lq), jnp.float32),
          jnp.zeros((b, kvh, g, lq, d), jnp.float32))
  (m, l, acc), _ = jax.lax.scan(body, init, (kb, vb, kib, vab, ksb, bb))
  safe_l = jnp.where(l == 0.0, 1.0, l)
  out = acc / safe_l[..., None]  # [b, kvh, g, lq, d]
  lse = m + jnp.log(safe_l)  # [b, kvh, g, lq]
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def flash_attention(qg, kb, vb, kib, vab, ksb, bb, q_index, q_segment, causal):
  """Blockwise attention output [b, kvh, g, lq, d] (float32); see module docstring."""
  return _forward(qg, kb, vb, kib, vab, ksb, bb, q_index, q_segment, causal)[0]


def _fwd(qg, kb, vb, kib, vab, ksb, bb, q_index, q_segment, causal):
  out, lse = _forward(qg, kb, vb, kib, vab, ksb, bb, q_index, q_segment, causal)
  return out, (qg, kb, vb, kib, vab, ksb, bb, q_index, q_segment, out, lse)


def _bwd(causal, res, dout):
  qg, kb, vb, kib, vab, ksb, bb, q_index, q_segment, out, lse = res
  dout = dout.astype(jnp.float32)  # [b, kvh, g, lq, d]
  delta = jnp.sum(dout * out, -1)  # [b, kvh, g, lq]
  # The four matmuls read operands in the inputs' dtype and accumulate in
  # float32 (as FlashAttention's backward does): for bf16 inputs, bf16 dots
  # (AMX on CPU) instead of float32 ones; for float32 inputs nothing changes.
  lo = qg.dtype
  dout_lo = dout.astype(lo)

  def body(dq, x):
    kb_j, vb_j, ki_j, va_j, ks_j, bb_j = x
    mask = _mask(q_index, q_segment, ki_j, va_j, ks_j, causal)
    s = _block_scores(qg, kb_j, bb_j)
    p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)  # [b, kvh, g, lq, blk]
    dv = mm32("bkgqs,bkgqd->bskd", p.astype(lo), dout_lo)  # [b, blk, kvh, d]
    dp = mm32("bkgqd,bskd->bkgqs", dout_lo, vb_j.astype(lo))
    ds = p * (dp - delta[..., None])  # [b, kvh, g, lq, blk]
    dq = dq + mm32("bkgqs,bskd->bqkgd", ds.astype(lo), kb_j.astype(lo))
    dk = mm32("bkgqs,bqkgd->bskd", ds.astype(lo), qg)  # [b, blk, kvh, d]
    # d(scores)/d(bias) = 1: the bias gradient is ds, summed over a broadcast batch.
    db = None
    if bb_j is not None:
      db = (ds.sum(0, keepdims=True) if bb_j.shape[0] == 1 else ds).astype(bb_j.dtype)
    return dq, (dk.astype(kb.dtype), dv.astype(vb.dtype), db)

  dq, (dk, dv, db) = jax.lax.scan(body, jnp.zeros(qg.shape, jnp.float32),
                                  (kb, vb, kib, vab, ksb, bb))
  return (dq.astype(qg.dtype), dk, dv, None, None, None, db, None, None)


flash_attention.defvjp(_fwd, _bwd)
