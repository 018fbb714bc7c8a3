"""MoE in the training tasks (aux losses in the loss and metrics, config errors) and the
dense-vs-MoE experiment end to end."""

import json
import math
import os

import jax
import numpy as np
import pytest
from flax import linen as nn

from llmrl.config import ConfigError, load_config_file
from llmrl.models.moe import layer_stats
from llmrl.objectives.lm import causal_lm_loss
from tests import launcher


def _assert_initial_cross_entropy(ce, logits, weights):
  """At initialisation the logits z are small and nearly independent of the target, so the
  cross-entropy logsumexp(z) - z_target is ln V + Var(z)/2 to second order (Var over the
  vocabulary, averaged over tokens), up to the target logit's deviation from its row mean:
  about sqrt(Var(z) / n) over n tokens."""
  z = np.asarray(logits, np.float64)[np.asarray(weights) > 0]  # [n, V]
  var = float(z.var(-1).mean())
  want, tol = math.log(z.shape[-1]) + var / 2, 0.05 + 4 * math.sqrt(var / len(z))
  assert abs(ce - want) < tol, f"cross-entropy {ce:.4f} vs ln V + Var/2 = {want:.4f} ± {tol:.3f}"


def _config(spec, data_cache, **moe):
  c = load_config_file(spec)
  c.data.cache_dir = data_cache
  for k, v in moe.items():
    c.model.moe[k] = v
  return c


def test_lm_task_adds_weighted_aux_losses(data_cache):
  from llmrl.tasks import lm

  c = _config("configs/moe_vs_dense.py:tiny", data_cache, aux_loss_weight=0.5, z_loss_weight=0.25,
              every=1)  # fmt: skip
  task, model, _ = lm.make_task(c)
  batch = next(task.data)
  params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
  loss, (weight, sums) = jax.jit(task.loss_fn)(params, batch, jax.random.key(1))
  # Independent assembly: plain LM loss + weight * (0.5 * sum aux + 0.25 * sum z) over 2 layers.
  logits, v = jax.jit(lambda p: model.apply(
    {"params": p}, batch["inputs"], positions=batch["positions"],
    segment_ids=batch["segment_ids"], deterministic=False, mutable=["moe"]))(params)  # fmt: skip
  base, (w, _) = causal_lm_loss(logits, batch["targets"], batch["weights"])
  _assert_initial_cross_entropy(float(base) / float(w), logits, batch["weights"])
  stats = layer_stats(v["moe"])
  assert len(stats) == 2
  aux = sum(float(s["aux_loss"]) for s in stats)
  z = sum(float(s["z_loss"]) for s in stats)
  np.testing.assert_allclose(float(loss), float(base) + float(w) * (0.5 * aux + 0.25 * z), rtol=1e-5)
  np.testing.assert_allclose(float(sums["moe/aux_loss"]) / float(weight), aux / 2, rtol=1e-5)
  fractions = [float(sums[f"moe/expert_fraction_{i}"]) / float(weight) for i in range(4)]
  np.testing.assert_allclose(sum(fractions), 1.0, atol=1e-5)
  assert 0.0 <= float(sums["moe/dropped_fraction"]) / float(weight) < 1.0


def test_moe_config_errors_name_the_key():
  from llmrl.tasks import lm

  c = load_config_file("configs/moe_vs_dense.py:tiny")
  for key, value, match in (
    ("router_order", "softmax_first", "config.model.moe.router_order"),
    ("every", 5, "config.model.moe.every=5"),
    ("experts_per_token", 9, "config.model.moe.experts_per_token=9"),
    ("capacity_factor", 0.0, "config.model.moe.capacity_factor"),
    ("dispatch", "alltoall", "config.model.moe.dispatch"),
  ):
    bad = load_config_file("configs/moe_vs_dense.py:tiny")
    bad.model.moe[key] = value
    with pytest.raises(ConfigError, match=match):
      lm.validate_model(bad.model, bad.train.seq_len)
  c.model.moe.num_experts = 0  # dense: the other MoE keys are not checked
  c.model.moe.every = 99
  lm.validate_model(c.model, c.train.seq_len)


def test_bert_and_t5_tasks_report_moe_metrics(data_cache):
  from llmrl.models.bert import Bert
  from llmrl.tasks import bert, t5

  for spec, make in (("configs/pretrain_bert.py:tiny", bert.make_task),
                     ("configs/pretrain_t5.py:tiny", t5.make_task)):  # fmt: skip
    c = _config(spec, data_cache, num_experts=2, experts_per_token=1, every=2)
    task, model, _ = make(c)
    assert model.config.moe.num_experts == 2
    params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
    batch = next(task.data)
    loss, (weight, sums) = jax.jit(task.loss_fn)(params, batch, jax.random.key(1))
    # Switch aux loss: E * sum_i f_i p_i, 1 under uniform routing, >= ~1 otherwise.
    assert float(sums["moe/aux_loss"]) / float(weight) > 0.9
    # The untrained models' losses, from their logits (the same call as the task's loss).
    run = dict(deterministic=False, rngs={"dropout": jax.random.key(1)}, mutable=["moe"])
    if make is bert.make_task:
      (mlm, nsp), _ = model.apply({"params": params}, batch["inputs"], batch["token_type_ids"],
                                  batch["segment_ids"], method=Bert.pretrain, **run)
      _assert_initial_cross_entropy(float(sums["mlm_loss"] / weight), mlm, batch["weights"])
      _assert_initial_cross_entropy(float(sums["nsp_loss"] / weight), nsp,
                                    np.ones(len(batch["nsp_labels"])))
    else:
      logits, _ = model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"],
                              segment_ids=batch["segment_ids"], **run)
      _assert_initial_cross_entropy(float(sums["nll"] / weight), logits, batch["weights"])


def test_tiny_moe_vs_dense_experiment(tmp_path, data_cache):
  workdir = tmp_path / "run"
  launcher.run("moe_vs_dense", "configs/moe_vs_dense.py:tiny", str(workdir),
               f"--config.data.cache_dir={data_cache}", "--config.train.steps=10",
               "--config.train.log_every=5", "--config.train.checkpoint_every=10",
               "--config.eval_batches=1")  # fmt: skip
  with open(workdir / "report.json") as f:
    report = json.load(f)
  dense, moe = report["dense"], report["moe"]
  # Equal active parameters up to the router (d_model x experts, one MoE layer).
  assert moe["params_active"] - dense["params_active"] == 64 * 4
  assert moe["params_total"] > 1.3 * dense["params_total"]
  assert len(moe["eval"]["expert_fraction"]) == 1
  np.testing.assert_allclose(sum(moe["eval"]["expert_fraction"][0]), 1.0, atol=1e-5)
  for name in ("quality_vs_compute.png", "expert_utilisation.png"):
    assert os.path.getsize(workdir / name) > 1000
  with open(workdir / "moe" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f][-1]
  assert last["step"] == 10 and "train/moe/aux_loss" in last and "train/moe/z_loss" in last
