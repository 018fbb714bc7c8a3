"""The PPO-RLHF run: rollouts with llmrl.decoding, updates with llmrl.train's step.

Shares the engine's pieces: `setup_state` (sharded init or restore), the
Checkpointer (params of policy + critic, optimizer state, RNG, and a data
state holding the prompt-iterator position, β and the reward shift), the
MetricWriter and the progress line. A killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl import data as data_lib
from llmrl import decoding
from llmrl.adapters import lora as lora_lib
from llmrl.adapters import tuning as tuning_lib
from llmrl.config import ConfigError, check_divides, check_enum, check_positive
from llmrl.models import GPT
from llmrl.rlhf import ppo
from llmrl.rlhf.reward import ScalarHeadModel
from llmrl.rlhf.sft import inherit
from llmrl.tasks import lm
from llmrl.train import mesh as mesh_lib
from llmrl.train.checkpoint import Checkpointer
from llmrl.train.metrics import MetricWriter, Progress
from llmrl.train.optim import make_optimizer
from llmrl.train.trainer import NonFiniteError, jit_train_step, setup_state

log = logging.getLogger("llmrl")


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks config.ppo (and the stage paths) before anything is loaded."""
  p = c.ppo
  for key in ("sft_from", "rm_from"):
    if not c[key]:
      raise ConfigError(f"config.{key} is empty: PPO-RLHF needs the SFT and reward-model "
                        "workdirs (--config.sft_from=... --config.rm_from=...).")
  check_enum("ppo.kl_controller", p.kl_controller, ("adaptive", "proportional", "fixed"))
  check_enum("ppo.kl_estimator", p.kl_estimator, ("k1", "k2", "k3"))
  if not 0 <= p.kl_coef_min <= p.kl_coef <= p.kl_coef_max:
    raise ConfigError(f"config.ppo.kl_coef={p.kl_coef} must lie in [kl_coef_min, kl_coef_max] = "
                      f"[{p.kl_coef_min}, {p.kl_coef_max}] (the range the KL controller keeps β "
                      "in).")
  check_divides("config.ppo.minibatches", p.minibatches, "config.ppo.rollout_batch",
                p.rollout_batch, "each epoch splits the rollout into equal minibatches")
  if p.get("ptx_coef", 0.0) < 0:
    raise ConfigError(f"config.ppo.ptx_coef={p.ptx_coef} must be >= 0 (0 turns PPO-ptx off).")
  if p.get("ptx_coef", 0.0) > 0:
    check_positive("ppo.ptx_batch", p.ptx_batch)
  if not isinstance(p.get("shift_batches", 1), int) or p.get("shift_batches", 1) < 1:
    raise ConfigError(f"config.ppo.shift_batches={p.shift_batches!r} must be an int >= 1 "
                      "(rollout batches of SFT samples that set the score shift and scale).")
  if not 0 <= p.get("critic_warmup", 0) < p.iterations:
    raise ConfigError(f"config.ppo.critic_warmup={p.critic_warmup} must be in [0, "
                      f"config.ppo.iterations={p.iterations}) (iterations that train only the "
                      "critic).")


def prompt_arrays(tok, examples: list[dict]) -> dict:
  """Left-padded chat prompts: ids/mask [N, P], and each prompt's example index."""
  rows = [data_lib.chat.encode(tok, ex["prompt"]).ids for ex in examples]
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), tok.pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
  return {"ids": ids, "mask": mask, "index": np.arange(len(rows), dtype=np.int32)}


def ptx_batches(config, tok, seq_len: int):
  """PPO-ptx's packed pretraining batches (config.data, pretrain split), or None when off."""
  pc = config.ppo
  if pc.get("ptx_coef", 0.0) <= 0:
    return None
  return data_lib.lm_batches(config.data, tok, batch_size=pc.ptx_batch, seq_len=seq_len,
                             shard_index=jax.process_index(), shard_count=jax.process_count(),
                             seed=config.seed, split="pretrain")


class LoRASetup(NamedTuple):
  """PPO-RLHF with one frozen base shared by policy, reference and critic."""
  forward: ppo.Forward
  init_params: Callable     # rng -> {"base", "policy": {"lora"}, "critic": {"lora", "head"}}
  initial: Callable         # () -> the same tree from the SFT base and reward model
  mask: Any                 # trainable: everything but "base"
  sampler: Any             # DecodeAdapter sampling the policy (adapters on the fly)
  policy_params: Callable   # params -> the sampler's params {"base", "lora"} (no merged copy)


def lora_setup(config, sft, rm, policy: GPT, critic: ScalarHeadModel, length: int) -> LoRASetup:
  """Policy adapters from config.lora (B = 0: the policy starts as SFT); the critic is the
  same base + its own adapters + the reward model's head, its adapters taken from a LoRA
  reward model when there is one (then the critic starts as the reward model)."""
  x = jnp.zeros((1, length), jnp.int32)
  policy_lora = lora_lib.LoRA.from_config(policy, config.lora, x)
  sft_base = tuning_lib.stage_params(sft)
  rm_tree = rm.params
  if isinstance(rm_tree, dict) and "lora" in rm_tree:
    critic_lora = lora_lib.LoRA.from_config(critic, rm.config.lora, x)
    critic_start, head = (lambda: rm_tree["lora"]), rm_tree["base"]["head"]
  else:
    critic_lora = lora_lib.LoRA.from_config(critic, config.lora, x)
    critic_start = lambda: critic_lora.init(jax.random.PRNGKey(config.seed + 2))  # noqa: E731
    head = tuning_lib.stage_params(rm)["head"]

  def init_params(rng):
    return {"base": policy.init({"params": rng}, x)["params"],
            "policy": {"lora": policy_lora.init(rng)},
            "critic": {"lora": critic_lora.init(jax.random.fold_in(rng, 1)),
                       "head": critic.init({"params": rng}, x)["params"]["head"]}}

  def initial():
    copy = lambda tree: jax.tree.map(lambda a: jnp.array(a, copy=True), tree)  # noqa: E731
    return {"base": copy(sft_base),
            "policy": {"lora": policy_lora.init(jax.random.PRNGKey(config.seed + 1))},
            "critic": {"lora": copy(critic_start()), "head": copy(head)}}

  shapes = nn.meta.unbox(jax.eval_shape(init_params, jax.random.PRNGKey(0)))
  mask = {k: jax.tree.map(lambda _, k=k: k != "base", v) for k, v in shapes.items()}
  return LoRASetup(ppo.lora_forward(policy, critic, policy_lora, critic_lora), init_params,
                   initial, mask, lora_lib.decoder(policy, policy_lora),
                   lambda p: {"base": p["base"], "lora": p["policy"]["lora"]})


def score_moments(rollout, params, prompts: dict, pc, seed: int, rng) -> tuple[float, float]:
  """Mean and std of the raw RM scores of the SFT policy's samples on ppo.shift_batches
  rollout batches of prompts (drawn apart from the training stream, own sampling keys)."""
  n = max(int(pc.get("shift_batches", 1)), 1)
  source = data_lib.example_batches(prompts, batch_size=pc.rollout_batch, seed=seed + 7919,
                                    key="rlhf_probe").source
  means, variances = [], []
  for i in range(n):
    _, (_, m) = rollout(params, source[i], jax.random.fold_in(rng, i), jnp.float32(0.0),
                        jnp.float32(0.0), jnp.float32(1.0))
    m = jax.device_get(m)
    means.append(float(m["ppo/rm_score_raw"]))
    variances.append(float(m["ppo/rm_score_raw_std"]) ** 2)
  mean = float(np.mean(means))  # equal batch sizes: pooled moments of all samples
  var = float(np.mean(np.asarray(variances) + np.square(means))) - mean ** 2
  return mean, float(np.sqrt(max(var, 0.0)))


def train_rlhf(config: ml_collections.ConfigDict, workdir: str, stream=None) -> dict:
  """Runs PPO-RLHF; returns the last logged metrics."""
  validate(config)
  pc = config.ppo
  sft = lm.load_stage(config.sft_from)
  rm = lm.load_stage(config.rm_from)
  with config.unlocked():
    config.init_from = config.sft_from
  inherit(config, sft.config)
  tok, cfg = sft.tokenizer, sft.model_config
  os.makedirs(workdir, exist_ok=True)
  shutil.copyfile(tok.path, os.path.join(workdir, "tokenizer.model"))
  policy, critic = GPT(cfg), ScalarHeadModel(cfg)
  examples = data_lib.examples(config.data, "preferences")
  prompts = prompt_arrays(tok, examples)
  plen = prompts["ids"].shape[1]
  if plen + pc.max_new_tokens > cfg.max_len:
    raise ConfigError(f"prompts of {plen} tokens + config.ppo.max_new_tokens="
                      f"{pc.max_new_tokens} exceed the model's max_len={cfg.max_len}.")
  batches = data_lib.example_batches(prompts, batch_size=pc.rollout_batch, seed=config.seed,
                                     key="rlhf_prompts")
  mesh = mesh_lib.make_mesh(config.mesh)
  updates = pc.iterations * pc.epochs * pc.minibatches
  copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)  # noqa: E731
  sft_params, rm_params = tuning_lib.stage_params(sft), tuning_lib.stage_params(rm)
  if lora_lib.enabled(config.get("lora")):
    lora = lora_setup(config, sft, rm, policy, critic, plen + pc.max_new_tokens)
    init_params, initial, mask = lora.init_params, lora.initial, lora.mask
    forward, policy_params, ref_params = lora.forward, lora.policy_params, None
    sampler = lora.sampler
  else:
    def init_params(rng):
      x = jnp.zeros((1, plen + pc.max_new_tokens), jnp.int32)
      return {"policy": policy.init({"params": rng}, x)["params"],
              "critic": critic.init({"params": rng}, x)["params"]}

    initial = lambda: {"policy": copy(sft_params), "critic": copy(rm_params)}  # noqa: E731
    mask, forward, policy_params, sampler = None, None, lambda p: p["policy"], policy
    ref_params = copy(sft_params)  # own copy: the train step donates the state
  tx, schedule = make_optimizer(config.optim, updates, mask=mask)

  ckpt = Checkpointer(f"{workdir}/checkpoints", keep=config.keep_checkpoints)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  setup = setup_state(config.seed, init_params, tx, mesh, ckpt, initial)
  state, start = setup.state, setup.start
  rm_params = copy(rm_params)
  score_fn = jax.jit(ppo.make_scorer(policy, critic, ScalarHeadModel(cfg), pc, tok.end_id, plen,
                                     forward))
  step_fn = jit_train_step(ppo.make_loss(policy, critic, pc, plen, forward), tx, schedule, 1,
                           mesh, setup.shardings)  # the engine's sharded, donating step
  streams = ppo.rng_streams(config.seed + 1)

  def rollout(params, batch, rng, beta, shift, scale):
    out = decoding.generate(sampler, policy_params(params), batch["ids"],
                            max_new_tokens=pc.max_new_tokens, method="sample",
                            temperature=pc.temperature, eos_id=tok.end_id, pad_id=tok.pad_id,
                            rng=rng, pad_to_multiple=plen)
    return out, score_fn(params, ref_params, rm_params, batch["ids"], batch["mask"],
                         out.tokens, out.lengths, beta, shift, scale)

  ptx = ptx_batches(config, tok, plen + pc.max_new_tokens)
  if setup.data_state is not None:
    batches.set_state(setup.data_state["prompts"])
    if ptx is not None:
      ptx.set_state(setup.data_state["ptx"])
    beta, shift = setup.data_state["beta"], setup.data_state["score_shift"]
    scale = setup.data_state.get("score_scale", 1.0)
    writer.truncate_after(start)
    log.info("resumed RLHF from %s/checkpoints iteration %d", workdir, start)
  else:
    # Normalise the reward so the SFT policy's own samples average 0 (InstructGPT),
    # and with ppo.scale_score have unit std.
    beta = float(pc.kl_coef)
    shift, std = score_moments(rollout, state.params, prompts, pc, config.seed, streams["probe"])
    scale = max(std, 1e-3) if pc.get("scale_score") else 1.0
    log.info("reward shift, scale (mean, std of RM scores of %d SFT samples) = %.4f, %.4f",
             pc.get("shift_batches", 1) * pc.rollout_batch, shift, scale)

  progress = Progress(pc.iterations, start, pc.rollout_batch * pc.max_new_tokens, 0.0,
                      stream=stream, enabled=jax.process_index() == 0, label="rlhf")
  last = writer.last_record() if start else {}
  try:
    for it in range(start, pc.iterations):
      batch = next(batches)
      data_state = batches.get_state()
      sample_key, shuffle_keys = ppo.iteration_keys(streams, it, pc.epochs)
      out, (roll, metrics) = rollout(state.params, batch, sample_key, jnp.float32(beta),
                                     jnp.float32(shift), jnp.float32(scale))
      rows = dict(roll._asdict())
      n = len(rows["seq"])
      policy_on = it >= pc.get("critic_warmup", 0)
      rows["train_policy"] = np.full(n, float(policy_on), np.float32)
      sums: dict = {}
      for epoch in range(pc.epochs):
        order = np.asarray(jax.random.permutation(shuffle_keys[epoch], n))
        for part in np.split(order, pc.minibatches):
          mb = {k: v[part] for k, v in rows.items()}
          if ptx is not None:  # PPO-ptx: pretraining rows ride along
            mb.update({f"ptx_{k}": v for k, v in next(ptx).items()})
          state, m = step_fn(state, mb)
          for k, v in m.items():
            sums.setdefault(k, []).append(v)
      host = jax.device_get({**metrics, **{k: jnp.mean(jnp.stack(v)) for k, v in sums.items()}})
      host = {k: float(v) for k, v in host.items()}
      if host["train/finite"] < 1.0:
        raise NonFiniteError(f"non-finite PPO update at iteration {it + 1}; the last good "
                             f"checkpoint (iteration {ckpt.latest_step()}) is kept.")
      texts = [tok.decode([t for t in row[:k] if t != tok.end_id])
               for row, k in zip(np.asarray(out.tokens).tolist(), np.asarray(out.lengths))]
      host["ppo/true_reward"] = float(np.mean([
          data_lib.labeler.score(examples[i], t) for i, t in zip(batch["index"], texts)]))
      host["ppo/policy_on"] = float(policy_on)
      if it > pc.get("critic_warmup", 0):  # sampled from an updated policy: the KL says
        beta = ppo.update_beta(beta, host["ppo/kl_mean"], pc, pc.rollout_batch)  # something
      done = it + 1
      if it == start:
        progress.start_timing(done)
      writer.write(done, host)
      progress.report(done, host["ppo/score"], name="score")
      last = {"step": done, **host}
      if done % config.checkpoint_every == 0 or done == pc.iterations:
        saved = {"prompts": data_state, "beta": beta, "score_shift": shift, "score_scale": scale}
        if ptx is not None:
          saved["ptx"] = ptx.get_state()
        ckpt.save(done, state, saved)
    writer.flush()
  finally:
    ckpt.close()
    writer.close()
  return last
