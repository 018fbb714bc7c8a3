"""Data-parallel, FSDP and tensor-parallel layouts train exactly like one device."""

import jax
import numpy as np
import pytest

from llmrl.train import mesh as mesh_lib
from llmrl.train import trainer
from llmrl.train.metrics import read_jsonl
from tests.helpers import RandomTokens, engine_config, gpt_task, tiny_gpt

STEPS, BATCH, SEQ = 4, 8, 8


def losses(tmp_path, name, devices, microbatches=1, **mesh_sizes):
  c = engine_config(STEPS, BATCH, **mesh_sizes)
  c.train.microbatches = microbatches
  mesh = mesh_lib.make_mesh(c.mesh, devices=devices)
  task = gpt_task(tiny_gpt(), RandomTokens(BATCH, SEQ, 64))
  trainer.train(c, str(tmp_path / name), task, mesh=mesh)
  recs = read_jsonl(str(tmp_path / name / "metrics.jsonl"))
  return np.array([r["train/loss"] for r in recs]), np.array([r["train/grad_norm"] for r in recs])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return losses(tmp_path_factory.mktemp("ref"), "one", jax.devices()[:1])


@pytest.mark.parametrize("layout", [
    dict(data=8), dict(fsdp=8, data=1), dict(tensor=4, data=2),
    dict(data=2, fsdp=2, tensor=2),
])
def test_layouts_match_one_device(tmp_path, reference, layout):
  assert len(jax.devices()) == 8
  loss, gnorm = losses(tmp_path, "run", jax.devices(), **layout)
  ref_loss, ref_gnorm = reference
  assert len(loss) == STEPS
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(gnorm, ref_gnorm, rtol=1e-4)


def test_gradient_accumulation_matches_full_batch(tmp_path, reference):
  loss, gnorm = losses(tmp_path, "accum", jax.devices()[:2], microbatches=2, data=2)
  np.testing.assert_allclose(loss, reference[0], rtol=1e-5)
  np.testing.assert_allclose(gnorm, reference[1], rtol=1e-4)


def test_params_are_initialised_sharded(tmp_path):
  """With FSDP the embedding table is split over devices, not replicated."""
  c = engine_config(1, BATCH, fsdp=8, data=1)
  mesh = mesh_lib.make_mesh(c.mesh)
  model = tiny_gpt()
  task = gpt_task(model, RandomTokens(BATCH, SEQ, 64))
  import flax.linen as nn
  boxed = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  sh = mesh_lib.logical_shardings(boxed, mesh)
  emb = sh["embed"]["embedding"]
  assert emb.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  params = jax.jit(lambda k: nn.meta.unbox(task.init_params(k)), out_shardings=sh)(
      jax.random.PRNGKey(0))
  shard_shapes = {s.data.shape for s in params["embed"]["embedding"].addressable_shards}
  assert shard_shapes == {(64, 32 // 8)}


def test_bf16_compute_keeps_fp32_params(tmp_path):
  c = engine_config(2, BATCH, data=2)
  mesh = mesh_lib.make_mesh(c.mesh, devices=jax.devices()[:2])
  task = gpt_task(tiny_gpt(dtype="bfloat16"), RandomTokens(BATCH, SEQ, 64))
  result = trainer.train(c, str(tmp_path), task, mesh=mesh)
  dtypes = {p.dtype for p in jax.tree.leaves(result.state.params)}
  assert dtypes == {np.dtype("float32")}
  assert np.isfinite(result.metrics["train/loss"])
  # bf16 logits change the loss only slightly relative to fp32 compute.
  ref = trainer.train(c, str(tmp_path / "fp32"), gpt_task(tiny_gpt(), RandomTokens(BATCH, SEQ, 64)),
                      mesh=mesh).metrics
  assert abs(result.metrics["train/loss"] - ref["train/loss"]) < 0.05
  assert result.metrics["train/loss"] != ref["train/loss"]
