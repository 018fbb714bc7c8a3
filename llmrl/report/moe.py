"""Dense vs mixture-of-experts GPT at equal active parameters: train both, evaluate, plot.

`run(config, workdir)` trains workdir/dense (config.model with MoE off) and
workdir/moe (config.model as given) with the one trainer, evaluates both on
the held-out split, and writes workdir/report.json, quality_vs_compute.png
(loss against training FLOPs) and expert_utilisation.png (per-layer token
fractions per expert on held-out data, and their spread during training).
"""

from __future__ import annotations

import copy
import json
import logging
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from llmrl import data as data_lib  # noqa: E402
from llmrl.models.accounting import count_params_from_config, flops_per_token  # noqa: E402
from llmrl.models.moe import layer_stats  # noqa: E402
from llmrl.objectives.lm import causal_lm_loss  # noqa: E402
from llmrl.train.metrics import read_jsonl  # noqa: E402

log = logging.getLogger("llmrl")
VARIANTS = ("dense", "moe")


def variant_config(config, name: str):
  """The config of one variant: "dense" turns MoE off, "moe" keeps config.model.moe."""
  c = copy.deepcopy(config)
  if name == "dense":
    with c.unlocked():
      c.model.moe.num_experts = 0
  return c


def evaluate(model, params, batches, num_batches: int) -> dict:
  """Held-out loss/accuracy (eval capacity) and per-layer expert fractions [layers, E]."""

  @jax.jit
  def forward(params, batch):
    logits, aux = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                              segment_ids=batch["segment_ids"], mutable=["moe"])
    _, (weight, sums) = causal_lm_loss(logits, batch["targets"], batch["weights"])
    stats = layer_stats(aux.get("moe", {}))
    fractions = jnp.stack([s["expert_fraction"] for s in stats]) if stats else jnp.zeros((0,))
    dropped = jnp.stack([s["dropped_fraction"] for s in stats]) if stats else jnp.zeros((0,))
    return weight, sums["nll"], sums["accuracy"], fractions, dropped

  weight = nll = acc = 0.0
  fractions, dropped = [], []
  for _ in range(num_batches):
    w, n, a, f, d = jax.device_get(forward(params, next(batches)))
    weight, nll, acc = weight + w, nll + n, acc + a
    fractions.append(f)
    dropped.append(d)
  out = dict(loss=float(nll / weight), accuracy=float(acc / weight))
  if model.config.moe is not None:
    out["expert_fraction"] = np.mean(fractions, axis=0).tolist()  # [layers, E]
    out["dropped_fraction"] = float(np.mean(dropped))
  return out


def train_variant(config, workdir: str, name: str) -> dict:
  """Trains one variant in workdir/name; returns its sizes, FLOPs and held-out results."""
  from llmrl.config import write_config
  from llmrl.tasks import lm
  from llmrl.train import mesh as mesh_lib
  from llmrl.train import trainer

  c = variant_config(config, name)
  sub = os.path.join(workdir, name)
  mesh = mesh_lib.make_mesh(c.mesh)
  trainer.validate(c.train, mesh)
  task, model, tok = lm.make_task(c, sub)
  write_config(c, sub)
  log.info("%s: %s", name, lm.describe(model))
  result = trainer.train(c, sub, task, mesh=mesh)
  held = data_lib.lm_batches(c.data, tok, batch_size=c.train.global_batch_size,
                             seq_len=c.train.seq_len, seed=0, split=c.eval_split)  # fmt: skip
  params = jax.device_get(result.state.params)
  counts = count_params_from_config(model.config)
  recs = read_jsonl(os.path.join(sub, "metrics.jsonl"))
  return dict(
    params_total=counts["total"],
    params_active=counts["active"],
    params_active_non_embedding=counts["active_non_embedding"],
    train_flops_per_token=flops_per_token(model.config, c.train.seq_len),
    train_flops=task.flops_per_step * c.train.steps,
    final_train_loss=result.metrics.get("train/nll", result.metrics["train/loss"]),
    tokens_per_s=result.metrics.get("perf/tokens_per_s"),
    eval=evaluate(model, params, held, c.eval_batches),
    curve=[(r["step"] * task.flops_per_step, r.get("train/nll", r["train/loss"])) for r in recs],
    fraction_curve=[(r["step"], [r[k] for k in sorted(r) if k.startswith(
      "train/moe/expert_fraction_")]) for r in recs],  # fmt: skip
  )


def plot_quality(results: dict, path: str) -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in results.items():
    x, y = zip(*r["curve"])
    ax.plot(x, y, label=f"{name} ({r['params_active'] / 1e6:.2f}M active / "
                        f"{r['params_total'] / 1e6:.2f}M total)")  # fmt: skip
    ax.scatter([r["train_flops"]], [r["eval"]["loss"]], marker="*", s=120)
  ax.set_xlabel("training FLOPs (active)")
  ax.set_ylabel("train nll (line) / held-out loss (star)")
  ax.set_title("dense vs MoE at equal active parameters")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_utilisation(moe: dict, num_experts: int, path: str) -> str:
  fractions = np.asarray(moe["eval"]["expert_fraction"])  # [layers, E]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
  width = 0.8 / len(fractions)
  for i, row in enumerate(fractions):
    a1.bar(np.arange(num_experts) + i * width, row, width, label=f"MoE layer {i}")
  a1.axhline(1.0 / num_experts, color="gray", ls="--", label="balanced")
  a1.set_xticks(np.arange(num_experts) + width * (len(fractions) - 1) / 2)
  a1.set_xticklabels([str(e) for e in range(num_experts)])
  a1.set_xlabel("expert")
  a1.set_ylabel("fraction of token assignments (held-out)")
  a1.legend(fontsize=8)
  steps = [s for s, f in moe["fraction_curve"] if f]
  curves = np.asarray([f for _, f in moe["fraction_curve"] if f])  # [points, E]
  for e in range(curves.shape[1] if curves.size else 0):
    a2.plot(steps, curves[:, e], label=f"expert {e}")
  a2.axhline(1.0 / num_experts, color="gray", ls="--")
  a2.set_xlabel("step")
  a2.set_ylabel("train fraction (mean over MoE layers)")
  a2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run(config, workdir: str) -> dict:
  """Trains both variants and writes report.json and the two PNGs; returns the report."""
  if not config.model.moe.num_experts:
    from llmrl.config import ConfigError
    raise ConfigError("config.model.moe.num_experts=0: the MoE variant needs experts (e.g. 4).")
  results = {name: train_variant(config, workdir, name) for name in VARIANTS}
  report = {name: {k: v for k, v in r.items() if k not in ("curve", "fraction_curve")}
            for name, r in results.items()}  # fmt: skip
  report["eval_loss_moe_minus_dense"] = report["moe"]["eval"]["loss"] - report["dense"]["eval"]["loss"]
  if jax.process_index() == 0:
    plot_quality(results, os.path.join(workdir, "quality_vs_compute.png"))
    plot_utilisation(results["moe"], config.model.moe.num_experts,
                     os.path.join(workdir, "expert_utilisation.png"))
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
  return report
