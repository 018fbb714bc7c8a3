"""GPU checks: the three attention kernels agree on the GPU, the "jax" kernel
reaches cuDNN, and the train step's throughput (train_vs_pytorch's runner) and MFU against PyTorch.

Run on a machine with a CUDA GPU (CPU works too, with small sizes, as a dry run):
    python benchmarks/gpu_check.py [--layers 12 --width 768 --heads 12 --seq 1024
                                    --batch 16 --steps 20 --rounds 3]

1. Attention agreement: `llmrl.models.attention.attend` with impl plain /
   blockwise / jax, outputs and input gradients, float32 and bfloat16, causal
   MHA, causal GQA with packed segments and left padding, and bidirectional
   attention with padding, each against a float64 numpy reference.
2. cuDNN: whether the compiled "jax" kernel calls cuDNN's fused attention
   (a `__cudnn$fmha` custom call in the optimised HLO), for the pure causal
   case and for the segment-masked case the GPT model uses with packed rows.
3. Train step (GPT-2 shape, bf16 compute, fp32 params, AdamW) with each
   attention kernel, and the same GPT-2 in transformers/PyTorch (bf16
   autocast, SDPA attention, fused AdamW) on the same GPU in the same script:
   tokens/s and MFU against the measured bf16 matmul peak, counting
   `llmrl.models.flops_per_token` FLOPs for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llmrl.models import GPT, GPTConfig, flops_per_token  # noqa: E402
from llmrl.models.attention import attend  # noqa: E402
from llmrl.objectives.lm import causal_lm_loss  # noqa: E402
from train_vs_pytorch import _time, jax_runner  # noqa: E402

IMPLS = ("plain", "blockwise", "jax")


def reference(q, k, v, qi, ki, qs, ks, causal):
  """float64 numpy attention with llmrl's masking rule; q [b, lq, h, d], k/v [b, lk, kvh, d]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  vis = qs[:, :, None] == ks[:, None, :]
  if causal:
    vis &= ki[None, None, :] <= qi[None, :, None]
  s = np.where(vis[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def cases(rng, b=2, length=256, h=8, d=64):
  """(name, q, k, v, q_index, k_index, q_segment, k_segment, causal) test inputs."""
  out = []
  idx = np.arange(length, dtype=np.int32)  # token index in the row (causal order)
  ones = np.ones((b, length), np.int32)
  mk = lambda kvh: [rng.standard_normal((b, length, n, d)).astype(np.float32)
                    for n in (h, kvh, kvh)]
  out.append(("causal MHA", *mk(h), idx, idx, ones, ones, True))
  # GQA (2 kv heads), row 0 packs two segments, row 1 is left-padded by 37.
  seg = ones.copy()
  seg[0, length // 3:] = 2
  seg[1, :37] = 0
  out.append(("causal GQA packed+padded", *mk(2), idx, idx, seg, seg, True))
  pad = ones.copy()
  pad[0, -50:] = 0
  out.append(("bidirectional padded", *mk(h), idx, idx, pad, pad, False))
  return out


def check_attention(rng, block_size):
  print("== attention kernels vs float64 reference (max abs error: output | dq dk dv)")
  worst = {}
  for name, q, k, v, qi, ki, qs, ks, causal in cases(rng):
    want = reference(q, k, v, qi, ki, qs, ks, causal)
    w = rng.standard_normal(want.shape)

    def f(q_, k_, v_, impl):
      o = attend(q_, k_, v_, qi, ki, qs, ks, causal=causal, impl=impl, block_size=block_size)
      return o, jnp.sum(o.astype(jnp.float32) * w)

    def grads_of(impl, args):
      return jax.jit(jax.grad(lambda *a: f(*a, impl)[1], argnums=(0, 1, 2)))(*args)

    # Gradient reference: the fp32 plain kernel at highest matmul precision (its
    # outputs are checked against float64 just below).
    with jax.default_matmul_precision("highest"):
      ref_g = grads_of("plain", [jnp.asarray(x) for x in (q, k, v)])
    for dtype in (jnp.float32, jnp.bfloat16):
      for impl in IMPLS:
        args = [jnp.asarray(x, dtype) for x in (q, k, v)]
        with jax.default_matmul_precision("highest" if dtype == jnp.float32 else "default"):
          o, _ = jax.jit(lambda *a, impl=impl: f(*a, impl))(*args)
          grads = grads_of(impl, args)
        keep = (qs != 0)[:, :, None, None]  # padding rows are unspecified
        err = float(np.max(np.abs(np.where(keep, np.asarray(o, np.float64) - want, 0))))
        gerr = [float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64))))
                for g, r in zip(grads, ref_g)]
        tag = jnp.dtype(dtype).name
        worst[(impl, tag)] = max(worst.get((impl, tag), 0.0), err, *gerr)
        print(f"  {name:26s} {tag:8s} {impl:9s} {err:.2e} | "
              + " ".join(f"{e:.2e}" for e in gerr), flush=True)
  return worst


def cudnn_used(causal_segments: bool) -> bool:
  b, length, h, d = 4, 1024, 12, 64
  q = jnp.zeros((b, length, h, d), jnp.bfloat16)
  idx = jnp.arange(length)
  seg = jnp.ones((b, length), jnp.int32) if causal_segments else None
  f = jax.jit(lambda q: attend(q, q, q, idx, idx, seg, seg, causal=True, impl="jax",
                               block_size=128))
  return has_cudnn_fmha(f.lower(q).compile().as_text())


def has_cudnn_fmha(hlo_text: str) -> bool:
  """Whether optimised HLO calls cuDNN's fused attention (custom call __cudnn$fmha...)."""
  return "__cudnn$fmha" in hlo_text


def matmul_peak(dtype, n=8192, reps=10):
  """Median FLOP/s of an n^3 matmul on random data (zeros or ones can run faster)."""
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times)


def section(title, fn, *args):
  """Runs one part of the check; a failure prints its traceback and the rest still runs."""
  t = time.perf_counter()
  try:
    return fn(*args)
  except Exception:  # noqa: BLE001 - report and go on to the next part
    print(f"!! {title} failed:\n{traceback.format_exc()}", flush=True)
    return None
  finally:
    print(f"   ({title}: {time.perf_counter() - t:.1f} s)", flush=True)


def llmrl_runner(cfg, batches, lr, steps_total):
  """train_vs_pytorch's llmrl train-step runner for a fresh GPT(cfg); `.cudnn` says whether
  its gradient calls cuDNN's fused attention."""
  model = GPT(cfg)
  x = jnp.asarray(batches[0][:, :-1])
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  run = jax_runner(model, params, batches, lr, steps_total)
  y, w = jnp.asarray(batches[0][:, 1:]), jnp.ones(x.shape, jnp.float32)
  grad = jax.jit(jax.grad(lambda p: causal_lm_loss(model.apply({"params": p}, x), y, w)[0]))
  run.cudnn = has_cudnn_fmha(grad.lower(params).compile().as_text())
  return run


def torch_runner(args, batches, lr):
  import torch
  import transformers
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  cfg = transformers.GPT2Config(
      vocab_size=args.vocab, n_positions=args.seq, n_embd=args.width, n_layer=args.layers,
      n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(cfg).to(dev).train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                          fused=dev == "cuda")
  fwd = torch.compile(model) if args.torch_compile else model
  data = [torch.from_numpy(b[:, :-1].astype(np.int64)).to(dev) for b in batches]

  def run(steps):
    for i in range(steps):
      ids = data[i % len(data)]
      with torch.autocast(dev, dtype=torch.bfloat16):
        loss = fwd(input_ids=ids, labels=ids).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      opt.zero_grad(set_to_none=True)
    return loss.item()  # waits for the last step
  return run, dev


def cudnn_report():
  print(f"== cuDNN fused attention in the compiled 'jax' kernel: pure causal "
        f"{cudnn_used(False)}, causal with segment ids {cudnn_used(True)}", flush=True)


def train_throughput(args, peak):
  """Train-step tokens/s and MFU of llmrl (each attention kernel) and PyTorch, rounds alternated."""
  rng = np.random.RandomState(0)
  batches = [rng.randint(0, args.vocab, (args.batch, args.seq + 1)) for _ in range(4)]
  tokens = args.batch * args.seq * args.steps
  steps_total = args.steps * (args.rounds + 1) * 8
  base = GPTConfig(vocab_size=args.vocab, max_len=args.seq, num_layers=args.layers,
                   d_model=args.width, num_heads=args.heads, d_ff=4 * args.width,
                   dtype=jnp.bfloat16)
  fpt = flops_per_token(base, args.seq)
  print(f"model: {args.layers} layers, width {args.width}, seq {args.seq}, batch {args.batch}, "
        f"vocab {args.vocab}; {fpt / 1e9:.2f} GFLOP per token", flush=True)
  runners = {}
  for impl in args.impls.split(","):
    t = time.perf_counter()
    run = section(f"llmrl {impl} build", llmrl_runner, base.replace(attention_impl=impl),
                  batches, 3e-4, steps_total)
    if run is None:
      continue
    if section(f"llmrl {impl} warm-up", run, 3) is not None:
      runners[f"llmrl {impl}"] = run
      print(f"   llmrl {impl}: built and compiled in {time.perf_counter() - t:.1f} s; gradient "
            f"calls cuDNN fused attention: {run.cudnn}", flush=True)
  if not args.skip_torch:
    built = section("pytorch build", torch_runner, args, batches, 3e-4)
    if built is not None and section("pytorch warm-up", built[0], 3) is not None:
      tag = ", torch.compile" if args.torch_compile else ""
      runners[f"pytorch ({built[1]}, sdpa, autocast bf16{tag})"] = built[0]
  rates = {k: [] for k in runners}
  for r in range(args.rounds):
    for k, run in runners.items():
      rates[k].append(tokens / _time(lambda: run(args.steps)))
    print(f"round {r + 1}/{args.rounds}: " + ", ".join(
        f"{k} {v[-1]:,.0f}" for k, v in rates.items()) + " tok/s", flush=True)
  med = {k: statistics.median(v) for k, v in rates.items()}
  ref = next((v for k, v in med.items() if k.startswith("pytorch")), None)
  for k, v in med.items():
    ratio = f", {v / ref:.2f}x pytorch" if ref else ""
    print(f"  {k:40s} {v:12,.0f} tok/s  MFU {v * fpt / peak:.1%}{ratio}", flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--width", type=int, default=768)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--vocab", type=int, default=50304)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--impls", default=",".join(IMPLS), help="llmrl attention kernels to time")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--torch-compile", action="store_true", help="the PyTorch peer under torch.compile")
  p.add_argument("--skip-attention", action="store_true")
  args = p.parse_args()
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.platform}: {dev.device_kind}", flush=True)
  if not args.skip_attention:
    worst = section("attention agreement", check_attention, np.random.default_rng(0), 64) or {}
    for (impl, tag), e in sorted(worst.items()):
      print(f"  worst {impl:9s} {tag:8s} {e:.2e}")
  section("cuDNN check", cudnn_report)
  n = 8192 if dev.platform == "gpu" else 1024  # CPU: a dry run
  peak = section("matmul peak", matmul_peak, jnp.bfloat16, n)
  if peak:
    print(f"== bf16 matmul peak ({n}^3 jnp.dot, random data, median of 10): "
          f"{peak / 1e12:.1f} TFLOP/s", flush=True)
    section("train throughput", train_throughput, args, peak)


if __name__ == "__main__":
  main()
