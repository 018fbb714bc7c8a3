"""How fast can llmrl's train step be, given XLA's matmul kernels? A bound, measured.

Run: python benchmarks/matmul_floor.py [--precision fp32|bf16 --attention plain
     --rounds 3 --steps 5 --reps 15]  (model flags as in train_vs_pytorch.py)

Reads every matmul of llmrl's compiled train step from its optimised HLO
(`llmrl.models.hlo_matmuls`), then times each distinct shape on its own as a
row-major [batch, m, k] x [batch, k, n] matmul, in XLA (`jnp.matmul`, bf16
operands accumulating in float32 as llmrl's layers do) and in PyTorch
(`torch.matmul`, the same arrays), in alternating blocks, the best of `--reps` runs each
(the best is the least noisy figure on a shared machine, and it makes the
bound below optimistic for llmrl). It also times both
full train steps (alternating rounds, as train_vs_pytorch.py does) and prints:
- per shape: count per step, XLA and PyTorch GFLOP/s, their ratio;
- per step: the time of those matmuls in XLA and in PyTorch, and each full
  step's time minus its matmuls ("the rest": norms, activations, softmax,
  copies, the loss, AdamW);
- the best llmrl / PyTorch ratio XLA's matmuls allow (the rest costing
  nothing), and the time the rest may take for llmrl to reach 1.2x.
Isolated matmuls run on a quiet, warm cache; inside a step they share the
cores with other work, so the "rest" figures include that contention. The
PyTorch model (transformers' GPT-2) runs the same FLOPs with a fused q/k/v
projection, so its matmul time is estimated on llmrl's shapes.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from llmrl.models.hlo_matmuls import compiled_matmuls  # noqa: E402
from train_vs_pytorch import add_model_args, build, jax_runner, torch_runner  # noqa: E402

_DTYPES = {"f32": (jnp.float32, torch.float32), "bf16": (jnp.bfloat16, torch.bfloat16)}


def time_shape(batch: int, m: int, k: int, n: int, dtype: str, reps: int) -> tuple[float, float]:
  """Seconds of one [batch, m, k] x [batch, k, n] matmul: (XLA, PyTorch)."""
  if dtype not in _DTYPES:
    raise ValueError(f"no timing for dtype {dtype!r}; known: {sorted(_DTYPES)}")
  jdt, tdt = _DTYPES[dtype]
  rng = np.random.RandomState(0)
  a = rng.standard_normal((batch, m, k)).astype(np.float32)
  b = rng.standard_normal((batch, k, n)).astype(np.float32)
  if batch == 1:
    a, b = a[0], b[0]
  ja, jb = jnp.asarray(a, jdt), jnp.asarray(b, jdt)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  ta, tb = torch.from_numpy(a).to(tdt), torch.from_numpy(b).to(tdt)
  runs = {"xla": lambda: f(ja, jb).block_until_ready(), "torch": lambda: torch.matmul(ta, tb)}
  best = {name: float("inf") for name in runs}
  # Three blocks per side, alternating, so noise hits both. Runs alternate by block, not
  # one by one: PyTorch's OpenMP workers spin for a while after each op and would slow the
  # XLA run right after it (one-by-one alternation cost XLA up to 30% on some shapes).
  for _ in range(3):
    for name, fn in runs.items():
      fn()  # compile / warm up
      for _ in range(max(1, reps // 3)):
        t0 = time.perf_counter()
        fn()
        best[name] = min(best[name], time.perf_counter() - t0)
  return best["xla"], best["torch"]


def main():
  p = argparse.ArgumentParser()
  add_model_args(p)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reps", type=int, default=15)
  args = p.parse_args()
  torch.set_num_threads(args.threads)

  pt, model, params = build(args)
  rng = np.random.RandomState(0)
  batches = [rng.randint(0, args.vocab, (args.batch, args.seq + 1)) for _ in range(4)]
  run_pt = torch_runner(pt, [b[:, :-1] for b in batches], 3e-4, args.precision)
  run_jx = jax_runner(model, params, batches, 3e-4, args.steps * (args.rounds + 1))
  inventory = compiled_matmuls(run_jx.compiled_text())
  counts = collections.Counter(mm.shape for mm in inventory)
  print(f"llmrl step: {len(inventory)} matmuls, {len(counts)} shapes, "
        f"{sum(mm.flops for mm in inventory) / 1e9:.1f} GFLOP", flush=True)

  print(f"{'count':>5} {'batch x m x k x n':>24} {'dtype':>5} {'XLA GF/s':>9} {'torch GF/s':>10} "
        f"{'XLA/torch':>9}")
  mm_xla = mm_torch = 0.0
  by_flops = sorted(counts.items(), key=lambda kv: -math.prod(kv[0][:4]) * kv[1])  # most FLOPs first
  for i, (shape, count) in enumerate(by_flops):
    batch, m, k, n, dtype = shape
    t_xla, t_torch = time_shape(batch, m, k, n, dtype, args.reps)
    mm_xla += count * t_xla
    mm_torch += count * t_torch
    flop = 2 * batch * m * k * n
    print(f"{count:5d} {f'{batch} x {m} x {k} x {n}':>24} {dtype:>5} {flop / t_xla / 1e9:9.1f} "
          f"{flop / t_torch / 1e9:10.1f} {t_torch / t_xla:9.2f}   [{i + 1}/{len(counts)}]",
          flush=True)

  run_pt(2)
  run_jx(2)
  pt_times, jx_times = [], []
  for r in range(args.rounds):
    t0 = time.perf_counter()
    run_pt(args.steps)
    pt_times.append((time.perf_counter() - t0) / args.steps)
    t0 = time.perf_counter()
    run_jx(args.steps)
    jx_times.append((time.perf_counter() - t0) / args.steps)
    print(f"round {r + 1}/{args.rounds}: pytorch {pt_times[-1] * 1e3:.0f} ms/step, "
          f"llmrl {jx_times[-1] * 1e3:.0f} ms/step", flush=True)
  s_pt, s_jx = statistics.median(pt_times), statistics.median(jx_times)
  tokens = args.batch * args.seq
  ms = 1e3
  print(f"model: {args.layers} layers, width {args.width}, seq {args.seq}, batch {args.batch}, "
        f"vocab {args.vocab}, attention={args.attention}, precision={args.precision}")
  print(f"matmuls of one step, timed alone: XLA {mm_xla * ms:.0f} ms, PyTorch {mm_torch * ms:.0f} ms "
        f"(XLA at {mm_torch / mm_xla:.2f}x PyTorch's rate)")
  print(f"full step: pytorch {s_pt * ms:.0f} ms ({tokens / s_pt:.0f} tok/s), rest "
        f"{(s_pt - mm_torch) * ms:.0f} ms; llmrl {s_jx * ms:.0f} ms ({tokens / s_jx:.0f} tok/s), rest "
        f"{(s_jx - mm_xla) * ms:.0f} ms; ratio llmrl/pytorch {s_pt / s_jx:.2f}x")
  budget = s_pt / 1.2 - mm_xla
  print(f"bound: with XLA's matmuls and nothing else, llmrl/pytorch <= {s_pt / mm_xla:.2f}x; "
        f"1.2x leaves {budget * ms:.0f} ms for the rest (llmrl's rest now {(s_jx - mm_xla) * ms:.0f} "
        f"ms, PyTorch's {(s_pt - mm_torch) * ms:.0f} ms)")


if __name__ == "__main__":
  main()
