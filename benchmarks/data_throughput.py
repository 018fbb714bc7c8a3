"""Packed tokens/s delivered by the llmrl.data pipeline, against a tiny-model train step.

Run: python benchmarks/data_throughput.py [--batch_size 8] [--seq_len 256] [--seconds 3]
                                          [--train_steps 60] [--skip_train]
Prints:
  1. the one-off preparation time (dataset, tokenizer, token cache under
     --cache_dir; near zero once cached);
  2. the pipeline's packed tokens/s at --batch_size x --seq_len, one line per
     prefetch setting (0 = everything on the calling thread, i.e. one core);
  3. the tiny pretraining run (configs/pretrain.py:tiny, trained with
     llmrl.train.trainer.train for --train_steps steps in a temporary workdir;
     its perf/tokens_per_s, which excludes the compiling first step), the
     pipeline's tokens/s at the same batch shape on one thread (prefetch=0),
     and their ratio. The pipeline must never be the bottleneck: the target is
     a ratio >= 20; the exit status is 1 below it.
"""

import argparse
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmrl import data  # noqa: E402

TARGET_RATIO = 20.0


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


def train_tokens_per_s(cache_dir: str, steps: int):
  """(perf/tokens_per_s, config) of the tiny pretraining preset trained for `steps` steps."""
  from configs import pretrain
  from llmrl.tasks.lm import make_task
  from llmrl.train import trainer

  config = pretrain.get_config("tiny")
  config.data.cache_dir = cache_dir
  config.train.steps = steps
  config.train.checkpoint_every = steps  # One checkpoint, after the timed steps.
  with tempfile.TemporaryDirectory() as workdir:
    task, _, _ = make_task(config, workdir)
    result = trainer.train(config, workdir, task, stream=io.StringIO())
    task.data.close()
  return result.metrics["perf/tokens_per_s"], config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--seconds", type=float, default=3.0)
  parser.add_argument("--world_size", default="tiny")
  parser.add_argument("--cache_dir", default="~/.cache/llmrl")
  parser.add_argument("--train_steps", type=int, default=60)
  parser.add_argument("--skip_train", action="store_true", help="only time the pipeline")
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
  if args.skip_train:
    return

  train_tps, config = train_tokens_per_s(args.cache_dir, args.train_steps)
  b, L = config.train.global_batch_size, config.train.seq_len
  tiny = config.data.copy_and_resolve_references()
  tiny.prefetch = 0
  pipe_tps, _, _ = measure(tiny, data.get_tokenizer(tiny), b, L, args.seconds)
  ratio = pipe_tps / train_tps
  print(
    f"tiny train step (configs/pretrain.py:tiny, {b}x{L}, {args.train_steps} steps): "
    f"{train_tps:,.0f} tokens/s"
  )
  print(f"pipeline at {b}x{L}, prefetch=0 (one thread): {pipe_tps:,.0f} packed tokens/s")
  verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
  print(f"ratio pipeline / train step: {ratio:,.0f}x (target >= {TARGET_RATIO:.0f}x: {verdict})")
  if ratio < TARGET_RATIO:
    sys.exit(1)


if __name__ == "__main__":
  main()
