"""Two processes racing to prepare the same cache both succeed and agree (like 2 hosts)."""

import os
import subprocess
import sys

import numpy as np

from llmrl import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = """
import sys, numpy as np
from llmrl import data
cfg = data.default_config()
cfg.cache_dir = sys.argv[1]
shard = int(sys.argv[2])
tok = data.get_tokenizer(cfg)
it = data.lm_batches(cfg, tok, batch_size=3, seq_len=32, shard_index=shard, shard_count=2,
                     seed=7)
np.save(sys.argv[3], np.stack([next(it)["inputs"] for _ in range(4)]))
"""


def test_two_processes_race_to_prepare(tmp_path):
  cache = str(tmp_path / "cache")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", WORKER, cache, str(i), str(tmp_path / f"shard{i}.npy")],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    for i in range(2)
  ]
  for p in procs:
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out.decode()
  # Exactly one complete dataset, tokenizer and token cache; nothing half-written.
  variants = [
    d for d, _, files in os.walk(os.path.join(cache, "tfds")) if "dataset_info.json" in files
  ]
  assert len(variants) == 1
  leftovers = [
    name
    for _, dirs, files in os.walk(cache)
    for name in dirs + files
    if "incomplete" in name or name.startswith(".tmp")
  ]
  assert not leftovers
  assert len(os.listdir(os.path.join(cache, "tokenizers"))) == 1
  assert len(os.listdir(os.path.join(cache, "tokens"))) == 1
  # The two hosts' shards form the single-host global batches.
  cfg = data.default_config()
  cfg.cache_dir = cache
  tok = data.get_tokenizer(cfg)
  it = data.lm_batches(cfg, tok, batch_size=6, seq_len=32, seed=7)
  whole = np.stack([next(it)["inputs"] for _ in range(4)])
  parts = [np.load(tmp_path / f"shard{i}.npy") for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
