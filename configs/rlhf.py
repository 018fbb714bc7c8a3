r"""PPO-RLHF: the SFT policy learns from the reward model with a KL penalty to SFT.

Commands (after pretrain, SFT and reward model; see configs/sft.py, configs/reward_model.py):
  python -m experiments.rlhf --config=configs/rlhf.py --workdir=/tmp/rlhf \
      --config.sft_from=/tmp/sft --config.rm_from=/tmp/rm
Runtime ~3 min on 2 CPU cores; expected: ppo/score rises, ppo/kl_mean stays within
2x config.ppo.kl_target, and the evaluation (workdir/eval.json) shows a higher true
reward and a lower hallucination rate than the SFT policy.

LoRA variant (policy, reference and critic share one frozen SFT base; the
reference is the base with adapters off; only adapters + value head train):
  ... --config.lora.rank=8 --config.lora.targets=attn/query,attn/value --config.optim.learning_rate=1e-4

Presets: `tiny` (after the tiny SFT / reward model): 4 iterations, ~40 s.
"""

import ml_collections

from llmrl import data
from llmrl.adapters import lora
from llmrl.rlhf import ppo
from llmrl.tasks.lm import model_config_block
from llmrl.train import mesh, optim


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.sft_from = ""                  # SFT workdir: policy init and frozen reference
  c.rm_from = ""                   # reward-model workdir: frozen RM and critic init
  c.init_from = ""                 # set to sft_from at run time (records the parent)
  c.checkpoint_every = 10          # iterations
  c.keep_checkpoints = 2
  c.eval_max_new_tokens = 24
  c.model = model_config_block()   # replaced by the SFT model
  c.data = data.default_config()
  c.data.world_size = "small"
  c.ppo = ppo.default_config()
  c.optim = optim.default_config()
  c.optim.learning_rate = 1e-5
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.optim.weight_decay = 0.0
  c.mesh = mesh.default_config()
  c.mesh.data = 1
  c.lora = lora.default_config()   # rank > 0: one frozen base; policy/critic adapters
  if preset == "tiny":
    c.data.world_size = "tiny"
    c.ppo.iterations = 4
    c.ppo.rollout_batch = 8
    c.ppo.max_new_tokens = 16
    c.checkpoint_every = 2
    c.eval_max_new_tokens = 16
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/rlhf.py; use tiny")
  return c
