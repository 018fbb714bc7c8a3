"""Full SFT vs LoRA SFT (several ranks) vs prompt tuning from one pretrained model.

For each variant: trainable parameters, optimizer-state bytes (measured on the
final train state), the adapter file size, the final train loss, the
held-out response-token accuracy (teacher-forced, on eval_known chats with
their gold answers) and the labeler's known_accuracy / true_reward of greedy
answers. Writes results.json, results.md and peft_compare.png in the workdir.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl import data as data_lib
from llmrl.adapters import tuning as tuning_lib
from llmrl.config import ConfigError

log = logging.getLogger("llmrl")


def _bytes(tree) -> int:
  return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def variants(c: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, SFT config) of every variant: full, lora_r{r} for each rank, prompt_n{n}."""
  out = []

  def variant(name, lr):
    v = ml_collections.ConfigDict(c.sft.to_dict())
    v.optim.learning_rate = lr
    out.append((name, v))
    return v

  variant("full", c.full_learning_rate)
  try:
    ranks = [int(r) for r in str(c.ranks).split(",") if r.strip()]
  except ValueError:
    raise ConfigError(f"config.ranks={c.ranks!r} must be comma-separated integers, e.g. "
                      "'1,2,4,8,16'.") from None
  for r in ranks:
    v = variant(f"lora_r{r}", c.lora_learning_rate)
    v.lora.rank, v.lora.alpha, v.lora.targets = r, c.lora_alpha_per_rank * r, c.lora_targets
  if c.prompt_tokens:
    v = variant(f"prompt_n{c.prompt_tokens}", c.prompt_learning_rate)
    v.prompt_tuning.num_tokens = c.prompt_tokens
    v.prompt_tuning.init = c.prompt_init
    v.prompt_tuning.init_text = c.prompt_init_text
  return out


def response_accuracy(tuning, model, params, tok, examples: list[dict], seq_len: int,
                      batch_size: int = 64) -> float:
  """Teacher-forced accuracy of the argmax next token on the gold responses' tokens."""
  from llmrl.rlhf.sft import chat_arrays
  arrays = chat_arrays(examples, tok, seq_len)
  fn = jax.jit(lambda p, i, pos, seg: jnp.argmax(tuning.apply(model, p, i, pos, seg), -1))
  right = total = 0.0
  for s in range(0, len(examples), batch_size):
    part = {k: v[s:s + batch_size] for k, v in arrays.items()}
    pred = np.asarray(fn(params, part["inputs"], part["positions"], part["segment_ids"]))
    right += float(((pred == part["targets"]) * part["weights"]).sum())
    total += float(part["weights"].sum())
  return right / max(total, 1.0)


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Pretrains once, then trains and measures every variant (each resumes if re-run)."""
  from llmrl.rlhf import pipeline
  os.makedirs(workdir, exist_ok=True)
  if c.cache_dir:
    with c.pretrain.unlocked():
      c.pretrain.data.cache_dir = c.cache_dir
    with c.sft.unlocked():
      c.sft.data.cache_dir = c.cache_dir
  pre = os.path.join(workdir, "pretrain")
  pipeline.pretrain(c.pretrain, pre)
  rows = []
  for name, v in variants(c):
    v.init_from = pre
    t0 = time.time()
    result, model, tok = pipeline.sft_run(v, os.path.join(workdir, name))
    seconds = time.time() - t0
    tuning = tuning_lib.from_config(v, model, v.train.seq_len, tok)
    params = jax.device_get(result.state.params)
    known = data_lib.examples(v.data, "eval_known")
    acc = response_accuracy(tuning, model, params, tok, known, v.train.seq_len)
    ev = pipeline.evaluate_stage(os.path.join(workdir, name), v.data, "chat",
                                 c.eval_max_new_tokens)
    adapter = {"lora": os.path.join("adapter", "adapter.safetensors"),
               "prompt": os.path.join("soft_prompt", "soft_prompt.safetensors")}.get(tuning.kind)
    rows.append({
        "variant": name, "kind": tuning.kind,
        "rank": v.lora.rank if tuning.kind == "lora" else None,
        "trainable_params": tuning.count(params),
        "total_params": int(sum(np.size(x) for x in jax.tree.leaves(
            params.get("base", params) if tuning.kind != "full" else params))),
        "optimizer_state_bytes": _bytes(result.state.opt_state),
        "saved_bytes": (os.path.getsize(os.path.join(workdir, name, adapter)) if adapter
                        else _bytes(params)),
        "final_train_loss": result.metrics.get("train/loss"),
        "response_token_accuracy": acc,
        "known_accuracy": ev["known_accuracy"], "true_reward": ev["true_reward"],
        "hallucination_rate": ev["hallucination_rate"],
        "sft_seconds": seconds,
    })
    log.info("%s: %s", name, {k: rows[-1][k] for k in ("trainable_params",
                                                       "optimizer_state_bytes",
                                                       "response_token_accuracy")})
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  _table(rows, os.path.join(workdir, "results.md"))
  plot(rows, os.path.join(workdir, "peft_compare.png"))
  return rows


def _table(rows: list[dict], path: str) -> None:
  lines = ["| variant | trainable params | optimizer state | saved | final loss | "
           "response-token acc | known_accuracy | true_reward |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {r['trainable_params']:,} | "
                 f"{r['optimizer_state_bytes'] / 1024:.1f} KiB | {r['saved_bytes'] / 1024:.1f} KiB"
                 f" | {r['final_train_loss']:.3f} | {r['response_token_accuracy']:.3f} | "
                 f"{r['known_accuracy']:.3f} | {r['true_reward']:.3f} |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def plot(rows: list[dict], path: str) -> str:
  """Accuracy vs trainable parameters (log x) and optimizer-state memory per variant."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  colors = {"full": "tab:red", "lora": "tab:blue", "prompt": "tab:green"}
  for r in rows:
    a.scatter(r["trainable_params"], r["response_token_accuracy"], color=colors[r["kind"]])
    a.annotate(r["variant"], (r["trainable_params"], r["response_token_accuracy"]),
               fontsize=8, xytext=(3, 3), textcoords="offset points")
  a.set_xscale("log")
  a.set_xlabel("trainable parameters")
  a.set_ylabel("held-out response-token accuracy")
  a.set_title("accuracy vs trainable parameters")
  names = [r["variant"] for r in rows]
  b.bar(names, [r["optimizer_state_bytes"] / 1024 for r in rows],
        color=[colors[r["kind"]] for r in rows])
  b.set_yscale("log")
  b.set_ylabel("optimizer state (KiB, log)")
  b.set_title("Adam state memory")
  b.tick_params(axis="x", rotation=45)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
