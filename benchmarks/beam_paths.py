"""llmrl beam search: the segment + ping-pong path against the plain one, in one process.

Run: python benchmarks/beam_paths.py [--repeats 5]
Same model and prompts as decode_vs_transformers.py (GPT-2 6 x 384, vocab
8192, batch 8, prompt 16, 128 new tokens, 4 beams, EOS suppressed). The
plain path (one while_loop over the full-size cache, beams reordered in
place) is forced by an adapter without `grow` / `start_beams`. The two are
timed alternately after a warm-up; prints medians, the speed-up, and whether
tokens and scores are identical.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import decode_vs_transformers as bench  # noqa: E402
from llmrl import decoding  # noqa: E402
from llmrl.decoding import adapters  # noqa: E402


@dataclasses.dataclass(frozen=True)
class PlainBeams(adapters.CachedDecoder):
  """CachedDecoder without cache segments or the spare reorder buffer."""

  grow = None
  start_beams = None


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  repeats = p.parse_args().repeats
  args = types.SimpleNamespace(layers=6, width=384, heads=6, vocab=8192, prompt=16, new=128)
  with tempfile.TemporaryDirectory() as tmp:
    _, model, params = bench.build(args, tmp)
  prompts = np.random.RandomState(0).randint(1, args.vocab, (8, args.prompt))

  def run(adapter):
    out = decoding.generate(
      adapter, params, prompts, max_new_tokens=args.new, method="beam", num_beams=4,
      min_new_tokens=args.new, eos_id=0, pad_id=0,
    )  # fmt: skip
    return jax.block_until_ready(out)

  paths = {"plain": PlainBeams(model), "segments+ping-pong": adapters.CachedDecoder(model)}
  outs = {name: run(a) for name, a in paths.items()}  # warm-up / compile
  a, b = outs.values()
  same = np.array_equal(a.tokens, b.tokens) and np.array_equal(a.scores, b.scores)
  times = {name: [] for name in paths}
  for _ in range(repeats):
    for name, adapter in paths.items():
      start = time.perf_counter()
      run(adapter)
      times[name].append(time.perf_counter() - start)
  med = {name: statistics.median(t) for name, t in times.items()}
  for name, t in med.items():
    print(f"{name:<20} {t:6.2f} s  ({8 * args.new / t:.0f} tok/s)")
  print(
    f"speed-up {med['plain'] / med['segments+ping-pong']:.2f}x; identical tokens and scores: {same}"
  )


if __name__ == "__main__":
  main()
