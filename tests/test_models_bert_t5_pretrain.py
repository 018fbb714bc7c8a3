"""End to end: the BERT and T5 pretraining experiments' tiny presets learn (run as subprocesses)."""

import json
import os

from tests import launcher


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return rows, [r["train/loss"] for r in rows if "train/loss" in r]


def test_tiny_bert_and_t5_pretraining(tmp_path, data_cache):
  runs = {
    "pretrain_bert": ("configs/pretrain_bert.py:tiny", tmp_path / "bert"),
    "pretrain_t5": ("configs/pretrain_t5.py:tiny", tmp_path / "t5"),
  }
  procs = {}
  for name, (config, workdir) in runs.items():  # both at once: each is mostly compile time
    log = open(tmp_path / f"{name}.log", "w")
    procs[name] = (launcher.start(name, config, str(workdir),
                                  f"--config.data.cache_dir={data_cache}", log=log), log)  # fmt: skip
  for name, (proc, log) in procs.items():
    assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    log.close()
  rows, losses = _losses(runs["pretrain_bert"][1])
  assert rows[-1]["step"] == 60 and len(losses) == 6
  assert losses[-1] < losses[0] - 0.8, losses  # ~7.2 -> ~5.8
  assert rows[-1]["train/nsp_accuracy"] > 0.6 and "train/mlm_loss" in rows[-1]
  rows, losses = _losses(runs["pretrain_t5"][1])
  assert rows[-1]["step"] == 60 and len(losses) == 6
  assert losses[-1] < losses[0] - 0.8, losses  # ~5.2 -> ~3.6
  for _, workdir in runs.values():
    assert os.path.isfile(workdir / "config.json") and os.path.isfile(workdir / "tokenizer.model")
    assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "60"
