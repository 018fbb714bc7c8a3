"""Packed tokens/s delivered by the llmrl.data pipeline on the tiny generated world.

Run: python benchmarks/data_throughput.py [--batch_size 8] [--seq_len 256] [--seconds 3]
Prints one line per prefetch setting (0 = everything on the calling thread,
i.e. one core) with tokens/s, batches/s and the share of non-padding tokens.
The first run also prepares the dataset, tokenizer and token cache under
--cache_dir (timed separately).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmrl import data  # noqa: E402


def measure(cfg, tok, batch_size: int, seq_len: int, seconds: float) -> tuple[float, float, float]:
  """Returns (tokens/s, batches/s, non-pad fraction) over about `seconds` of reading."""
  it = data.lm_batches(cfg, tok, batch_size=batch_size, seq_len=seq_len, seed=0)
  next(it)  # Warm up (epoch order, threads).
  n_batches, n_real, start = 0, 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    b = next(it)
    n_batches += 1
    n_real += int((b["segment_ids"] > 0).sum())
  elapsed = time.perf_counter() - start
  it.close()
  tokens = n_batches * batch_size * seq_len
  return tokens / elapsed, n_batches / elapsed, n_real / max(tokens, 1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--seconds", type=float, default=3.0)
  parser.add_argument("--world_size", default="tiny")
  parser.add_argument("--cache_dir", default="~/.cache/llmrl")
  args = parser.parse_args()
  cfg = data.default_config()
  cfg.world_size = args.world_size
  cfg.cache_dir = args.cache_dir
  start = time.perf_counter()
  tok = data.get_tokenizer(cfg)
  toks = data.tokenized(cfg, tok)
  print(
    f"prepare (dataset + tokenizer + token cache): {time.perf_counter() - start:.2f}s; "
    f"{toks.num_docs} documents, {toks.num_tokens} tokens per epoch"
  )
  for prefetch in (0, 2):
    cfg.prefetch = prefetch
    tps, bps, real = measure(cfg, tok, args.batch_size, args.seq_len, args.seconds)
    print(
      f"prefetch={prefetch}: {tps:,.0f} packed tokens/s ({bps:,.0f} batches/s of "
      f"{args.batch_size}x{args.seq_len}; {real:.1%} non-padding)"
    )


if __name__ == "__main__":
  main()
