"""NaN guard, checkpoint fallback and metric files of the training engine."""

import os
import struct

import jax
import numpy as np
import pytest

from llmrl.train import mesh as mesh_lib
from llmrl.train import trainer
from llmrl.train.metrics import read_jsonl
from tests.helpers import RandomTokens, engine_config, gpt_task, tiny_gpt


def run(workdir, steps, data=None, checkpoint_every=2):
  c = engine_config(steps, 4, data=1)
  c.train.checkpoint_every = checkpoint_every
  mesh = mesh_lib.make_mesh(c.mesh, devices=jax.devices()[:1])
  task = gpt_task(tiny_gpt(), data or RandomTokens(4, 8, 64))
  return trainer.train(c, str(workdir), task, mesh=mesh).metrics


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(trainer.NonFiniteError) as err:
    run(tmp_path, 8, RandomTokens(4, 8, 64, nan_at_batch=4))
  msg = str(err.value)
  assert "step 5" in msg and "train/loss=nan" in msg and "step 4" in msg
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps[-1] == 4
  # Nothing past the bad step was logged, and the checkpoint is finite and restorable.
  assert max(r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))) == 4


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
  ref = read_losses(tmp_path / "ref", 6)
  run(tmp_path / "run", 4)  # checkpoints at 2 and 4
  # Damage step 4 after the fact: truncate every array file in it.
  damaged = 0
  for root, _, files in os.walk(tmp_path / "run" / "checkpoints" / "4"):
    for f in files:
      path = os.path.join(root, f)
      if os.path.getsize(path) > 0:
        with open(path, "r+b") as fh:
          fh.truncate(os.path.getsize(path) // 2)
        damaged += 1
  assert damaged
  with caplog.at_level("WARNING", logger="llmrl"):
    run(tmp_path / "run", 6)
  assert any("unreadable" in r.message for r in caplog.records)
  kept = os.listdir(tmp_path / "run" / "checkpoints")
  assert any(k.startswith("corrupt-4") for k in kept), kept  # set aside, not deleted
  losses = [r["train/loss"] for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))]
  assert losses == ref  # resumed at step 2 and retrained 3..6 identically


def read_losses(workdir, steps):
  run(workdir, steps)
  return [r["train/loss"] for r in read_jsonl(str(workdir / "metrics.jsonl"))]


def _tfrecords(path):
  """Reads TFRecord framing (length, crc, data, crc) without TensorFlow."""
  with open(path, "rb") as f:
    while header := f.read(12):
      (n,) = struct.unpack("<Q", header[:8])
      yield f.read(n)
      f.read(4)


def test_metrics_jsonl_and_tensorboard(tmp_path):
  final = run(tmp_path, 3)
  recs = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in recs] == [1, 2, 3]
  for key in ("train/loss", "train/grad_norm", "train/param_norm", "train/learning_rate"):
    assert all(np.isfinite(r[key]) for r in recs), key
  assert final["step"] == 3 and "perf/tokens_per_s" in final
  from tensorboardX.proto import event_pb2
  files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "tensorboard") for f in fs]
  assert files and all(os.path.basename(f).startswith("events.out.tfevents") for f in files)
  tags = {}
  for rec in _tfrecords(files[0]):
    ev = event_pb2.Event.FromString(rec)
    for v in ev.summary.value:
      tags.setdefault(v.tag, []).append((ev.step, v.simple_value))
  assert [s for s, _ in tags["train/loss"]] == [1, 2, 3]
  np.testing.assert_allclose([v for _, v in tags["train/loss"]],
                             [r["train/loss"] for r in recs], rtol=1e-6)
