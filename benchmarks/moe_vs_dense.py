"""Throughput of the MoE block vs a dense FFN with the same active FLOPs (CPU by default).

Run: python benchmarks/moe_vs_dense.py [--batch 8 --seq 256 --width 256 --ffn 512
     --experts 8 --k 2 --capacity 1.25 --kind gelu --reps 10 --rounds 3]

The dense side is llmrl.models.layers.MLP with d_ff = k * ffn, so per token it
runs the same matmul FLOPs as k experts of width `ffn` (the active FLOPs; the
router adds width * experts more). The MoE side is llmrl.models.moe.MoE with
the training capacity factor, i.e. it also computes the empty slots of its
capacity buffers (capacity - 1 = 25% more expert FLOPs at the default 1.25)
plus routing, dispatch and combine. Both are timed jitted, forward and
forward + backward (grad of the summed output w.r.t. params and input),
rounds alternating dense / MoE; the median round is reported, for both
dispatch modes ("gather" and "einsum"). Prints tokens/s and MoE/dense ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from llmrl.models.layers import MLP  # noqa: E402
from llmrl.models.moe import MoE, MoEConfig  # noqa: E402


def timed(fn, args, reps: int) -> float:
  """Seconds per call of a jitted fn (after one warm-up call)."""
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(reps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / reps


def make(layer, x, deterministic: bool):
  params = jax.jit(layer.init)(jax.random.key(0), x)["params"]
  kw = {} if isinstance(layer, MLP) else {"deterministic": deterministic}
  fwd = jax.jit(lambda p, x: layer.apply({"params": p}, x, **kw))
  loss = lambda p, x: jnp.sum(layer.apply({"params": p}, x, **kw))  # noqa: E731
  bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return params, fwd, bwd


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--ffn", type=int, default=512)
  ap.add_argument("--experts", type=int, default=8)
  ap.add_argument("--k", type=int, default=2)
  ap.add_argument("--capacity", type=float, default=1.25)
  ap.add_argument("--kind", default="gelu")
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=3)
  a = ap.parse_args()
  x = jax.random.normal(jax.random.key(1), (a.batch, a.seq, a.width))
  tokens = a.batch * a.seq
  dense = make(MLP(d_ff=a.k * a.ffn, kind=a.kind), x, False)
  sides = {"dense": dense}
  for dispatch in ("gather", "einsum"):
    cfg = MoEConfig(num_experts=a.experts, experts_per_token=a.k, every=1, dispatch=dispatch,
                    capacity_factor=a.capacity)  # fmt: skip
    sides[f"moe_{dispatch}"] = make(MoE(cfg, d_ff=a.ffn, kind=a.kind), x, False)
  times = {(name, mode): [] for name in sides for mode in ("fwd", "fwd+bwd")}
  for _ in range(a.rounds):
    for name, (params, fwd, bwd) in sides.items():
      times[(name, "fwd")].append(timed(fwd, (params, x), a.reps))
      times[(name, "fwd+bwd")].append(timed(bwd, (params, x), a.reps))
  rate = {key: tokens / statistics.median(v) for key, v in times.items()}
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s); tokens/call {tokens}; "
        f"width {a.width}; dense d_ff {a.k * a.ffn}; MoE {a.experts} experts x d_ff {a.ffn}, "
        f"top-{a.k}, capacity factor {a.capacity}, {a.kind}")  # fmt: skip
  for mode in ("fwd", "fwd+bwd"):
    d = rate[("dense", mode)]
    print(f"{mode:8s} dense FFN        {d:12,.0f} tokens/s")
    for dispatch in ("gather", "einsum"):
      m = rate[(f"moe_{dispatch}", mode)]
      print(f"{mode:8s} MoE ({dispatch:6s})   {m:12,.0f} tokens/s   ratio MoE/dense {m / d:.2f}x")


if __name__ == "__main__":
  main()
