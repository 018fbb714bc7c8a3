r"""Full SFT vs LoRA SFT (ranks 1-16) vs prompt tuning: accuracy, trainable parameters, memory.

Command:
  python -m experiments.peft_compare --config=configs/peft_compare.py --workdir=/tmp/peft
Pretrains the tiny model once (configs/pretrain.py:tiny, 300 steps), then runs
SFT 7 ways from it: full, LoRA r = 1, 2, 4, 8, 16 on every projection, and a
16-token soft prompt. Runtime ~15 min measured on a 2-core box shared with
other jobs. Writes results.json, results.md and peft_compare.png. Expected
(measured, BUILD_NOTES.md): held-out response-token accuracy full 0.72; LoRA
0.61 (r=1, 1.3% of the parameters and Adam state) rising with rank to 0.70
(r=16, 21%); prompt tuning 0.46 with 1,024 trainable parameters.

Presets: `tiny` (tests): 30 pretraining steps, 8 SFT steps, ranks 1 and 4,
~2 min of CPU time (numbers meaningless, only the plumbing).
"""

import ml_collections

from configs import pretrain, sft


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.cache_dir = ""                 # prepared data ("" = each stage's config.data.cache_dir)
  c.pretrain = pretrain.get_config("tiny")
  c.pretrain.train.steps = 300
  c.pretrain.train.seq_len = 128   # the model's context: room for a soft prompt before SFT's 96
  c.pretrain.train.checkpoint_every = 300
  c.pretrain.train.log_every = 50
  c.sft = sft.get_config("tiny")
  c.sft.train.steps = 120
  c.sft.train.log_every = 20
  c.sft.train.checkpoint_every = 120
  c.sft.optim.warmup_steps = 10
  c.full_learning_rate = 1e-3      # full SFT
  c.ranks = "1,2,4,8,16"           # LoRA ranks, one run each
  c.lora_targets = "attn/*,mlp/*"  # every projection
  c.lora_alpha_per_rank = 2.0      # alpha = 2 r: the update scale alpha / r is 2 at every rank
  c.lora_learning_rate = 3e-3
  c.prompt_tokens = 16             # 0 = no prompt-tuning run
  c.prompt_init = "text"
  c.prompt_init_text = "Answer the question about the world in one short sentence."
  c.prompt_learning_rate = 3e-2
  c.eval_max_new_tokens = 16
  if preset == "tiny":
    c.pretrain.train.steps = 30
    c.pretrain.train.checkpoint_every = 30
    c.sft.train.steps = 8
    c.sft.train.checkpoint_every = 8
    c.sft.train.log_every = 4
    c.ranks = "1,4"
    c.prompt_tokens = 4
    c.eval_max_new_tokens = 4
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/peft_compare.py; use tiny")
  return c
