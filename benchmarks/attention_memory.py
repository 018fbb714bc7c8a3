"""Peak temporary memory of plain vs blockwise attention at long context.

Run: python benchmarks/attention_memory.py [--lengths 1024 4096 16384 --heads 8 --head_dim 64]

Compiles forward+backward of one attention call (batch 1, causal) for each
implementation and length and reads XLA's compiled memory analysis (no
execution, so 16k fits on a laptop). Plain attention materialises the
[heads, length, length] score matrix (quadratic); the blockwise kernel keeps
one [heads, length, block] tile at a time (linear in length).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from llmrl.models import attention  # noqa: E402


def temp_bytes(impl: str, length: int, heads: int, head_dim: int, block: int) -> int:
  """XLA's temporary-buffer bytes for grad of sum(attention(q, k, v))."""
  shape = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)

  def loss(q, k, v):
    pos = jnp.arange(length)  # [length] token indices
    out = attention.attend(q, k, v, pos, pos, None, None, causal=True, impl=impl,
                           block_size=block)
    return jnp.sum(out)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  compiled = grad.lower(shape, shape, shape).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--block", type=int, default=512)
  args = p.parse_args()
  print(f"forward+backward of causal attention, batch 1, {args.heads} heads x {args.head_dim}, "
        f"block {args.block}: temporary memory (MiB)")
  print(f"{'length':>8} {'plain':>10} {'blockwise':>10} {'ratio':>7}")
  for n in args.lengths:
    plain = temp_bytes("plain", n, args.heads, args.head_dim, args.block) / 2**20
    block = temp_bytes("blockwise", n, args.heads, args.head_dim, args.block) / 2**20
    print(f"{n:>8} {plain:>10.1f} {block:>10.1f} {plain / block:>6.1f}x", flush=True)


if __name__ == "__main__":
  main()
