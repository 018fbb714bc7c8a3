r"""The ChatGPT recipe end to end: pretrain -> SFT -> reward model -> PPO-RLHF -> report.

Command (the README's main job):
  python -m experiments.chatgpt --config=configs/chatgpt.py --workdir=runs/chatgpt
Each stage trains in WORKDIR/<stage> and resumes there; the report is
WORKDIR/report.md (+ report.json, losses.png, ppo.png).
Target (issue 7): <= 10 min on 2 CPU cores; RM held-out accuracy >= 0.8; true reward
after PPO > after SFT; hallucination rate lower after PPO; mean KL within 2x target.

Presets: `tiny` (smoke test, ~90 s): every stage shrunk to a few steps.
Stage settings live in config.pretrain / config.sft / config.reward_model /
config.rlhf (the stage config files' fields), e.g. --config.rlhf.ppo.kl_target=0.5.
"""

import ml_collections

from configs import pretrain, reward_model, rlhf, sft


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in ("", "tiny"):
    raise ValueError(f"unknown preset {preset!r} for configs/chatgpt.py; use tiny")
  c = ml_collections.ConfigDict()
  c.cache_dir = ""  # prepared data for every stage ("" = each stage's config.data.cache_dir)
  c.eval_max_new_tokens = 24
  c.pretrain = pretrain.get_config(preset)
  c.sft = sft.get_config(preset)
  c.reward_model = reward_model.get_config(preset)
  c.rlhf = rlhf.get_config(preset)
  if preset == "tiny":
    c.pretrain.train.steps = 30
    c.sft.train.steps = 10
    c.reward_model.train.steps = 10
    c.rlhf.ppo.iterations = 2
    c.eval_max_new_tokens = 12
  else:
    c.pretrain.train.steps = 1000
  return c
