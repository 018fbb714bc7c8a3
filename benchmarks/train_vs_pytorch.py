"""Training throughput: llmrl's train step vs the same GPT-2 in transformers/PyTorch.

Run: python benchmarks/train_vs_pytorch.py [--layers 6 --width 384 --heads 6 --seq 256
     --batch 8 --vocab 8192 --steps 10 --rounds 3 --precision fp32]

Both sides train the same architecture from the same weights (the PyTorch
model is saved and imported with llmrl.interop.hf.load) with AdamW on the
same batches. Rounds alternate (PyTorch, llmrl, PyTorch, ...) so machine noise
hits both; the median round is reported. Also prints achieved FLOP/s as a
fraction of the machine's measured fp32 matmul peak (the faster of a large
jnp.dot and torch.mm), i.e. MFU on CPU, counting 6N + attention + logits
FLOPs per token (llmrl.models.flops_per_token).

`--precision bf16` compares mixed precision on both sides: llmrl computes in
bfloat16 (`dtype=bfloat16`, float32 parameters and AdamW state) and PyTorch
runs its forward pass under `torch.autocast("cpu", bfloat16)` (float32
parameters); MFU is then against the bf16 matmul peak (on CPUs with AMX both
libraries' bf16 matmuls are several times their fp32 rate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from llmrl.interop import hf  # noqa: E402
from llmrl.models import flops_per_token  # noqa: E402
from llmrl.objectives.lm import causal_lm_loss  # noqa: E402
from llmrl.train import optim  # noqa: E402
from llmrl.train.step import TrainState, compiler_options, make_train_step  # noqa: E402


def matmul_peak(n: int = 2048, reps: int = 10, precision: str = "fp32") -> dict:
  """Best matmul FLOP/s of JAX and PyTorch on this machine, inputs in fp32 or bf16.

  JAX's bf16 matmul accumulates in float32 (bf16 x bf16 -> f32), the form
  llmrl's layers use and the one XLA runs on AMX; bf16 -> bf16 is ~5x slower.
  """
  out = {}
  jdt, tdt = (jnp.bfloat16, torch.bfloat16) if precision == "bf16" else (jnp.float32,
                                                                         torch.float32)
  a = jnp.asarray(np.random.rand(n, n), jdt)
  f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))  # AMX for bf16
  f(a).block_until_ready()
  t = min(_time(lambda: f(a).block_until_ready()) for _ in range(reps))
  out["jax"] = 2 * n**3 / t
  ta = torch.rand(n, n, dtype=tdt)
  torch.mm(ta, ta)
  t = min(_time(lambda: torch.mm(ta, ta)) for _ in range(reps))
  out["torch"] = 2 * n**3 / t
  return out


def _time(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def build(args):
  cfg = transformers.GPT2Config(
      vocab_size=args.vocab, n_positions=args.seq, n_embd=args.width, n_layer=args.layers,
      n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      bos_token_id=1, eos_token_id=1, attn_implementation="sdpa")
  torch.manual_seed(0)
  pt = transformers.GPT2LMHeadModel(cfg)
  path = tempfile.mkdtemp()
  pt.save_pretrained(path)
  dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
  model, params = hf.load(path, attention_impl=args.attention, dtype=dtype)
  return pt, model, params


def torch_runner(pt, batches, lr, precision: str = "fp32"):
  pt.train()
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
  opt = torch.optim.AdamW(pt.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
  data = [torch.from_numpy(b.astype(np.int64)) for b in batches]

  def run(steps):
    for i in range(steps):
      ids = data[i % len(data)]
      with autocast:
        loss = pt(input_ids=ids, labels=ids).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(pt.parameters(), 1.0)
      opt.step()
      opt.zero_grad(set_to_none=True)
    return float(loss.detach())
  return run


def jax_runner(model, params, batches, lr, steps_total):
  c = optim.default_config()
  c.learning_rate, c.warmup_steps, c.schedule = lr, 0, "constant"
  tx, schedule = optim.make_optimizer(c, steps_total)

  def loss_fn(p, batch, rng):
    logits = model.apply({"params": p}, batch["inputs"])
    return causal_lm_loss(logits, batch["targets"], batch["weights"])

  step = jax.jit(make_train_step(loss_fn, tx, schedule), donate_argnums=0,
                 compiler_options=compiler_options(jax.devices()[0].platform))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
  data = []
  for b in batches:  # HF shifts labels inside; we pass shifted targets explicitly.
    inputs = jnp.asarray(b[:, :-1])
    data.append({"inputs": inputs, "targets": jnp.asarray(b[:, 1:]),
                 "weights": jnp.ones(inputs.shape, jnp.float32)})
  holder = {"state": state}

  def run(steps):
    s = holder["state"]
    for i in range(steps):
      s, m = step(s, data[i % len(data)])
    jax.block_until_ready(m)
    holder["state"] = s
    return float(m["train/loss"])

  # The optimised HLO of the step, for the matmul inventory (benchmarks/matmul_floor.py).
  run.compiled_text = lambda: step.lower(holder["state"], data[0]).compile().as_text()
  return run


def add_model_args(p: argparse.ArgumentParser) -> None:
  """The model, batch and precision flags shared with benchmarks/matmul_floor.py."""
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--width", type=int, default=384)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--attention", default="plain")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                 help="bf16: mixed precision on both sides (bf16 compute, fp32 params)")


def main():
  p = argparse.ArgumentParser()
  add_model_args(p)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args()
  torch.set_num_threads(args.threads)

  pt, model, params = build(args)
  rng = np.random.RandomState(0)
  # Both sides see `seq` input tokens per row (PyTorch's labels shift internally).
  batches = [rng.randint(0, args.vocab, (args.batch, args.seq + 1)) for _ in range(4)]
  torch_batches = [b[:, :-1] for b in batches]
  run_pt = torch_runner(pt, torch_batches, 3e-4, args.precision)
  run_jx = jax_runner(model, params, batches, 3e-4, args.steps * (args.rounds + 1))
  print(f"devices: jax {jax.devices()[0].platform} x{jax.device_count()}, "
        f"torch threads {torch.get_num_threads()}", flush=True)
  run_pt(2)
  run_jx(2)  # compile + warm up
  tokens = args.batch * args.seq * args.steps
  pt_rates, jx_rates = [], []
  for r in range(args.rounds):
    pt_rates.append(tokens / _time(lambda: run_pt(args.steps)))
    jx_rates.append(tokens / _time(lambda: run_jx(args.steps)))
    print(f"round {r + 1}/{args.rounds}: pytorch {pt_rates[-1]:.0f} tok/s, "
          f"llmrl {jx_rates[-1]:.0f} tok/s", flush=True)
  pt_med, jx_med = statistics.median(pt_rates), statistics.median(jx_rates)
  peak = matmul_peak(precision=args.precision)
  best_peak = max(peak.values())
  fpt = flops_per_token(model.config, args.seq)
  print(f"model: {args.layers} layers, width {args.width}, seq {args.seq}, batch {args.batch}, "
        f"vocab {args.vocab}, attention={args.attention}, precision={args.precision}")
  print(f"pytorch: {pt_med:.0f} tok/s   llmrl: {jx_med:.0f} tok/s   ratio llmrl/pytorch: "
        f"{jx_med / pt_med:.2f}x")
  print(f"{args.precision} matmul peak: jax {peak['jax'] / 1e9:.1f} GFLOP/s, "
        f"torch {peak['torch'] / 1e9:.1f} GFLOP/s; model FLOPs/token {fpt / 1e6:.1f}M")
  print(f"MFU (vs best peak {best_peak / 1e9:.1f} GFLOP/s): llmrl {jx_med * fpt / best_peak:.0%}, "
        f"pytorch {pt_med * fpt / best_peak:.0%}")


if __name__ == "__main__":
  main()
