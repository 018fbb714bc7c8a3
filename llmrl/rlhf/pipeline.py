"""The stages of the ChatGPT recipe as library calls; experiments and `chatgpt` chain them.

Each stage trains in its own workdir and resumes there if re-run:
  pretrain (causal LM) -> sft (response-only loss) -> reward_model (K-way
  rankings) -> rlhf (PPO with a KL penalty).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from llmrl.config import write_config
from llmrl.models import GPT
from llmrl.train import mesh as mesh_lib
from llmrl.train import trainer

log = logging.getLogger("llmrl")


def _train(config, workdir: str, make_task) -> tuple[trainer.TrainResult, tuple]:
  """Builds the task (make_task(config, workdir) -> (task, model, ...)) and trains it."""
  from llmrl.tasks import lm
  mesh = mesh_lib.make_mesh(config.mesh)  # fails fast on a bad mesh
  trainer.validate(config.train, mesh)
  built = make_task(config, workdir)
  write_config(config, workdir)
  log.info(lm.describe(GPT(built[1].config)))
  return trainer.train(config, workdir, built[0], mesh=mesh), built


def pretrain(config, workdir: str) -> dict:
  from llmrl.tasks import lm
  return _train(config, workdir, lm.make_task)[0].metrics


def sft(config, workdir: str) -> dict:
  """SFT; with config.lora / config.prompt_tuning also writes the adapter-only files."""
  return sft_run(config, workdir)[0].metrics


def sft_run(config, workdir: str) -> tuple[trainer.TrainResult, GPT, object]:
  """SFT returning (TrainResult, model, tokenizer): the final state for callers that measure it."""
  from llmrl.rlhf import sft as sft_lib
  result, (_, model, tok) = _train(config, workdir, sft_lib.make_task)
  save_adapters(config, workdir, model, config.train.seq_len, result.state.params, tok)
  return result, model, tok


def save_adapters(config, workdir: str, model, seq_len: int, params, tok=None,
                  train_paths: tuple = ()) -> str | None:
  """Writes workdir/adapter (LoRA) or workdir/soft_prompt: only the trained adapters."""
  from llmrl.adapters import lora as lora_lib
  from llmrl.adapters import prompt as prompt_lib
  from llmrl.adapters import tuning as tuning_lib
  tuning = tuning_lib.from_config(config, model, seq_len, tok, train_paths)
  if tuning.kind == "full" or jax.process_index() != 0:
    return None
  params = jax.device_get(params)
  if tuning.lora:
    path = lora_lib.save_adapter(os.path.join(workdir, "adapter"), tuning.lora, params["lora"])
    if tuning.train_paths:  # e.g. the reward model's head: trained too, and needed
      from safetensors.numpy import save_file
      trained = lora_lib.flatten({k: params["base"][k] for k in tuning.train_paths})
      save_file({k: np.asarray(v, np.float32) for k, v in trained.items()},
                os.path.join(workdir, "adapter", "trained.safetensors"))
  else:
    path = prompt_lib.save_soft_prompt(os.path.join(workdir, "soft_prompt"), tuning.prompt,
                                       params["prompt"])
  log.info("%s adapter (%d trainable params) written to %s", tuning.kind,
           tuning.count(params), path)
  return path


# The surface-only ranking's accuracy on the same pairs as each RM accuracy.
SURFACE_BASELINES = {"heldout_accuracy": "surface_baseline_heldout_accuracy",
                     "unseen_fact_accuracy": "surface_baseline_unseen_accuracy"}
COUNTS = {"heldout_accuracy": "heldout_prompts", "unseen_fact_accuracy": "unseen_fact_prompts"}


def reward_model(config, workdir: str) -> dict:
  """Trains the reward model and writes its held-out pairwise accuracies to eval.json."""
  from llmrl.rlhf import reward
  from llmrl.train.metrics import MetricWriter
  result, (_, model, _, heldout) = _train(config, workdir, reward.make_task)
  save_adapters(config, workdir, model, config.train.seq_len, result.state.params,
                train_paths=("head",))
  rewards_fn = jax.jit(reward.make_rewards_fn(model, reward.make_tuning(config, model)))
  params = jax.device_get(result.state.params)
  evals, counts = {}, {}
  for key, arrays in heldout.items():  # held-out prompts; prompts about unseen facts
    rewards = rewards_fn(params, {k: v for k, v in arrays.items()
                                  if k not in ("scores", "surface")})
    evals[key] = reward.pairwise_accuracy(np.asarray(rewards), arrays["scores"])
    # The surface-only ranking (decline > hedged > plain, no fact known) on the same pairs.
    surface = SURFACE_BASELINES[key]
    evals[surface] = reward.pairwise_accuracy(arrays["surface"], arrays["scores"], ties=0.5)
    counts[key] = int(len(arrays["scores"]))
    log.info("reward_model.%s = %.3f over %d prompts (surface-only ranking %.3f)", key,
             evals[key], counts[key], evals[surface])
  if jax.process_index() == 0:
    writer = MetricWriter(workdir)
    writer.write(result.metrics.get("step", config.train.steps),
                 {f"eval/{k}": v for k, v in evals.items()})
    writer.close()
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump({**{f"reward_model.{k}": v for k, v in evals.items()},
                 **{COUNTS[k]: v for k, v in counts.items()}}, f, indent=2)
  return {**result.metrics, **{f"eval/{k}": v for k, v in evals.items()},
          **{f"eval/{COUNTS[k]}": v for k, v in counts.items()}}


def rlhf(config, workdir: str) -> dict:
  """PPO-RLHF, then the labeler evaluation of the final policy (workdir/eval.json).

  Also returns "kl": the KL to the reference over the iterations that trained the policy
  (mean and last; the critic warm-up's iterations have KL 0 by construction)."""
  from llmrl.rlhf import loop
  from llmrl.train.metrics import read_jsonl
  final = loop.train_rlhf(config, workdir)
  write_config(config, workdir)
  from llmrl.adapters import lora as lora_lib
  key = "" if lora_lib.enabled(config.get("lora")) else "policy"  # LoRA: the whole tree
  result = evaluate_stage(workdir, config.data, "chat", config.eval_max_new_tokens,
                          params_key=key)
  path = os.path.join(workdir, "metrics.jsonl")  # written by process 0 only
  records = read_jsonl(path) if os.path.exists(path) else []
  return {**final, "eval": result, "kl": kl_summary(records, config.ppo.get("critic_warmup", 0))}


def kl_summary(records: list[dict], critic_warmup: int = 0) -> dict:
  """Mean and last KL (ppo/kl_mean) over the logged iterations that trained the policy."""
  kls = [r["ppo/kl_mean"] for r in records
         if "ppo/kl_mean" in r and r.get("ppo/policy_on", float(r["step"] > critic_warmup))]
  if not kls:
    return {"kl_mean": float("nan"), "kl_last": float("nan"), "kl_iterations": 0}
  return {"kl_mean": float(np.mean(kls)), "kl_last": float(kls[-1]), "kl_iterations": len(kls)}


def evaluate_stage(workdir: str, data_config, style: str, max_new_tokens: int,
                   params_key: str | None = None) -> dict:
  """Labeler metrics of a stage's policy on eval_known / eval_unknown (also eval.json)."""
  from llmrl import data
  from llmrl.adapters import tuning as tuning_lib
  from llmrl.rlhf import evaluate
  from llmrl.tasks import lm
  stage = lm.load_stage(workdir, params_key=params_key)
  model, params = tuning_lib.stage_policy(stage)
  result = evaluate.evaluate(model, params, stage.tokenizer,
                             data.examples(data_config, "eval_known"),
                             data.examples(data_config, "eval_unknown"),
                             style=style, max_new_tokens=max_new_tokens)
  log.info("%s: true_reward %.3f [%.3f, %.3f] known_accuracy %.3f hallucination_rate %.3f "
           "answer_rate %.3f over %d questions", workdir, result["true_reward"],
           *result["true_reward_ci"], result["known_accuracy"], result["hallucination_rate"],
           result["answer_rate"], result["num_questions"])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{style}.json"), "w") as f:
      json.dump(result, f, indent=2)
  return result
