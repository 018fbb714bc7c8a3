"""Decoding tokens/s: llmrl.decoding.generate against transformers' PyTorch generate on CPU.

Run: python benchmarks/decode_vs_transformers.py [--layers 6] [--width 384] [--heads 6]
         [--vocab 8192] [--batch 8] [--prompt 16] [--new 128] [--beams 4] [--repeats 5]
Both sides decode the same random GPT-2 weights (built in transformers, saved
with save_pretrained and imported with llmrl.interop.hf.load), the same
prompts, and EOS suppressed (min_new_tokens = new), so every run produces exactly batch x new tokens (for
beam search: per prompt). Each measurement is warmed up (llmrl: compiled)
once, then the two sides are timed alternately `--repeats` times each (so
both see the same machine load) and the medians are reported. transformers
runs with the better of 1 and 2 torch threads (OMP_WAIT_POLICY=PASSIVE: on a
busy 2-core machine, spinning OpenMP threads slow torch down ~10x, which would
flatter llmrl). Prints, for greedy and beam search, tokens/s of both and the
ratio llmrl / transformers (target >= 2x), whether the greedy tokens agree,
and llmrl's cached vs uncached (whole sequence re-run every step) speed.
Also prints each side's first call, which for llmrl includes tracing and
compiling `generate` for that shape (transformers has nothing to compile; its
first call here follows the thread-count probe's runs). Exit status 1 below
target (judged on the compiled, steady-state medians).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from llmrl import decoding  # noqa: E402
from llmrl.interop import hf  # noqa: E402

TARGET_RATIO = 2.0


def _seconds(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def median_seconds(fn, repeats: int) -> float:
  fn()  # warm up / compile
  return statistics.median(_seconds(fn) for _ in range(repeats))


def alternate(a, b, repeats: int) -> tuple[float, float, float, float]:
  """Median seconds of a and b, timed in turns after one warm-up each, then the
  warm-up (first call) seconds of a and b."""
  first_a, first_b = _seconds(a), _seconds(b)
  times = [(_seconds(a), _seconds(b)) for _ in range(repeats)]
  return (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times),
          first_a, first_b)


def best_threads(fn) -> int:
  """The torch thread count (1 or 2) that runs fn fastest here."""
  speed = {}
  for n in (1, 2):
    torch.set_num_threads(n)
    fn()
    speed[n] = _seconds(fn)
  best = min(speed, key=speed.get)
  torch.set_num_threads(best)
  return best


def build(args, path: str):
  """A random GPT-2 in transformers (eval) and the same weights as an llmrl model."""
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(
    vocab_size=args.vocab,
    n_positions=args.prompt + args.new,
    n_embd=args.width,
    n_layer=args.layers,
    n_head=args.heads,
    bos_token_id=0,
    eos_token_id=0,
  )
  ref = transformers.GPT2LMHeadModel(cfg).eval()
  ref.save_pretrained(path)
  model, params = hf.load(path)
  return ref, model, params


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in [
    ("layers", 6),
    ("width", 384),
    ("heads", 6),
    ("vocab", 8192),
    ("batch", 8),
    ("prompt", 16),
    ("new", 128),
    ("beams", 4),
    ("repeats", 5),
  ]:
    p.add_argument(f"--{name}", type=int, default=default)
  args = p.parse_args()
  print(
    f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
    f"transformers {transformers.__version__}, {os.cpu_count()} CPUs"
  )
  print(
    f"GPT-2 {args.layers} layers x {args.width} wide, {args.heads} heads, vocab {args.vocab}; "
    f"batch {args.batch}, prompt {args.prompt}, {args.new} new tokens (EOS suppressed)"
  )
  with tempfile.TemporaryDirectory() as tmp:
    ref, model, params = build(args, tmp)
  prompts = np.random.RandomState(0).randint(1, args.vocab, (args.batch, args.prompt))
  ids = torch.tensor(prompts)
  tokens = args.batch * args.new

  def ours(method, use_cache=True, **kw):
    def run():
      out = decoding.generate(
        model,
        params,
        prompts,
        max_new_tokens=args.new,
        method=method,
        min_new_tokens=args.new,
        eos_id=0,
        pad_id=0,
        use_cache=use_cache,
        **kw,
      )
      return jax.block_until_ready(out)

    return run

  def theirs(**kw):
    def run():
      with torch.inference_mode():
        return ref.generate(
          ids,
          attention_mask=torch.ones_like(ids),
          max_new_tokens=args.new,
          min_new_tokens=args.new,
          do_sample=False,
          pad_token_id=0,
          **kw,
        )

    return run

  rows, first, ok = [], [], True
  beam_kw = dict(num_beams=args.beams)
  for name, mine, peer in [
    ("greedy", ours("greedy"), theirs()),
    (f"beam {args.beams}", ours("beam", **beam_kw), theirs(**beam_kw, early_stopping=False)),
  ]:
    threads = best_threads(peer)
    t_ours, t_peer, first_ours, first_peer = alternate(mine, peer, args.repeats)
    print(f"{name}: transformers with {threads} torch thread(s)", flush=True)
    ratio = t_peer / t_ours
    ok &= ratio >= TARGET_RATIO
    rows.append((name, tokens / t_ours, tokens / t_peer, ratio))
    first.append((name, tokens / first_ours, tokens / first_peer, first_peer / first_ours))
  same = np.array_equal(np.asarray(ours("greedy")().tokens), theirs()()[:, args.prompt :].numpy())
  t_uncached = median_seconds(ours("greedy", use_cache=False), max(1, args.repeats // 2))

  for title, table in (("compiled (compile time excluded), medians", rows),
                       ("first call (llmrl's compile time included)", first)):
    print(f"\n{title}")
    print(f"{'method':<10} {'llmrl tok/s':>12} {'transformers tok/s':>19} {'ratio':>7}")
    for name, a, b, r in table:
      print(f"{name:<10} {a:>12.0f} {b:>19.0f} {r:>6.2f}x")
  print(f"greedy tokens identical to transformers: {same}")
  print(
    f"llmrl greedy cached {rows[0][1]:.0f} tok/s vs uncached {tokens / t_uncached:.0f} tok/s "
    f"({rows[0][1] * t_uncached / tokens:.1f}x from the KV cache)"
  )
  print(f"target >= {TARGET_RATIO:.0f}x transformers: {'met' if ok else 'NOT met'}")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
