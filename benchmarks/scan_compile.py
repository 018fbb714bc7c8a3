"""Lower + compile time of a GPT train-step gradient, unrolled blocks vs `scan_layers=True`.

    python -m benchmarks.scan_compile [--layers 12] [--width 256] [--seq 256]

Prints seconds to lower and to compile jit(grad(loss)) for each variant,
and the run time of one gradient step (median of 5 after a warm-up). Not a
test: timings depend on the machine and its load.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from llmrl.models import GPT, GPTConfig


def measure(cfg: GPTConfig, batch: int, seq: int) -> tuple[float, float, float]:
  """(lower, compile, median step) seconds of jit(grad(mean log-likelihood)) for GPT(cfg)."""
  model = GPT(cfg)
  ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                             jnp.zeros((1, seq), jnp.int32))["params"])

  def loss(p, x):
    logits = model.apply({"params": p}, x)  # [b, l, vocab]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], -1))

  t0 = time.perf_counter()
  lowered = jax.jit(jax.grad(loss)).lower(params, ids)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  real = model.init({"params": jax.random.key(0)}, jnp.zeros((1, seq), jnp.int32))["params"]
  x = jax.random.randint(jax.random.key(1), (batch, seq), 0, cfg.vocab_size)
  jax.block_until_ready(compiled(real, x))
  steps = []
  for _ in range(5):
    t = time.perf_counter()
    jax.block_until_ready(compiled(real, x))
    steps.append(time.perf_counter() - t)
  return t1 - t0, t2 - t1, sorted(steps)[2]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, default=12)
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--style", default="llama")
  a = ap.parse_args()
  base = GPTConfig(vocab_size=8192, max_len=a.seq, num_layers=a.layers, d_model=a.width,
                   num_heads=a.width // 64, d_ff=4 * a.width, style=a.style)
  for remat in ("none", "full"):
    for scan in (False, True):
      low, comp, step = measure(base.replace(scan_layers=scan, remat=remat), a.batch, a.seq)
      print(f"{a.layers} layers width {a.width} remat={remat:4s} scan_layers={scan!s:5s}: "
            f"lower {low:.2f}s compile {comp:.2f}s total {low + comp:.2f}s | "
            f"step {step * 1e3:.0f} ms", flush=True)


if __name__ == "__main__":
  main()
