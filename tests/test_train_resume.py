"""Exact resume after SIGKILL, and the 2-process (multi-host) run."""

import os
import signal
import time

import numpy as np

from llmrl.train.metrics import read_jsonl
from tests import launcher

CONFIG = "configs/pretrain.py:tiny"


def overrides(cache, steps=24, every=8):
  return [f"--config.data.cache_dir={cache}", f"--config.train.steps={steps}",
          "--config.train.log_every=1", f"--config.train.checkpoint_every={every}"]


def losses(workdir):
  recs = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [r["step"] for r in recs], [r["train/loss"] for r in recs]


def test_sigkill_resume_is_bitwise_exact(tmp_path, data_cache):
  ref = str(tmp_path / "ref")
  launcher.run("pretrain", CONFIG, ref, *overrides(data_cache))
  ref_steps, ref_losses = losses(ref)
  assert ref_steps == list(range(1, 25))

  run = str(tmp_path / "run")
  proc = launcher.start("pretrain", CONFIG, run, *overrides(data_cache))
  metrics, deadline = os.path.join(run, "metrics.jsonl"), time.time() + 300
  saved = os.path.join(run, "checkpoints", "8")  # orbax renames it there once complete
  while time.time() < deadline and proc.poll() is None:
    # Past step 13 with step 8's (async) checkpoint complete: a loaded machine can lag it.
    if (os.path.exists(metrics) and len(open(metrics).readlines()) >= 13
        and os.path.isdir(saved)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = len(open(metrics).readlines())
  assert 13 <= killed_at < 24

  out = launcher.run("pretrain", CONFIG, run, *overrides(data_cache))
  assert "resumed from" in out.stderr
  steps, run_losses = losses(run)
  assert steps == ref_steps
  assert run_losses == ref_losses  # bitwise: floats compared exactly


def test_two_processes_match_one(tmp_path, data_cache):
  """2 processes x 2 devices (gloo) train like 1 process x 4 devices."""
  base = overrides(data_cache, steps=4, every=2)
  single = str(tmp_path / "single")
  launcher.run("pretrain", CONFIG, single, *base, devices=4)
  port = launcher.free_port()
  multi = str(tmp_path / "multi")
  logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]
  procs = [launcher.start("pretrain", CONFIG, multi, *base, "--num_processes=2",
                          f"--process_id={i}", f"--coordinator_address=127.0.0.1:{port}",
                          devices=2, log=logs[i]) for i in range(2)]
  codes = [p.wait(timeout=600) for p in procs]
  for f in logs:
    f.close()
  assert codes == [0, 0], (tmp_path / "p0.log").read_text()[-3000:] + \
      (tmp_path / "p1.log").read_text()[-3000:]
  s_steps, s_losses = losses(single)
  m_steps, m_losses = losses(multi)
  assert m_steps == s_steps == [1, 2, 3, 4]
  np.testing.assert_allclose(m_losses, s_losses, rtol=1e-5)
  assert "4 global devices" in (tmp_path / "p0.log").read_text()
  assert sorted(os.listdir(os.path.join(multi, "checkpoints")))[-1] == "4"
