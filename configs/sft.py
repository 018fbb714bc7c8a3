r"""Supervised fine-tuning on chat turns (loss on assistant tokens only).

Commands (SFT starts from a finished pretraining workdir; the model shape,
tokenizer and generated world are taken from it):
  python -m experiments.pretrain --config=configs/pretrain.py --workdir=/tmp/pretrain
  python -m experiments.sft --config=configs/sft.py --workdir=/tmp/sft --config.init_from=/tmp/pretrain
Runtime ~1 min on 2 CPU cores; expected final train/loss (response tokens) < 0.5.

Parameter-efficient variants (base frozen; only adapters / the soft prompt are
trained and written to workdir/adapter or workdir/soft_prompt):
  ... --config.lora.rank=8 --config.lora.targets=attn/query,attn/value
  ... --config.prompt_tuning.num_tokens=16 --config.prompt_tuning.init=vocab

Presets: `tiny` (use after configs/pretrain.py:tiny): 40 steps, ~20 s.
"""

import ml_collections

from llmrl import data
from llmrl.adapters import lora, prompt
from llmrl.tasks.lm import model_config_block
from llmrl.train import mesh, optim, trainer


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""                 # pretraining workdir ("" = random init from config.model)
  c.model = model_config_block()   # replaced by init_from's model when given
  c.decline_below = 0.0            # > 0: known facts the pretrained model gives probability
                                   # < this are trained as "I don't know." (llmrl.rlhf.probe)
  c.data = data.default_config()
  c.data.world_size = "small"
  c.train = trainer.default_config()
  c.train.seq_len = 96
  c.train.steps = 300
  c.train.global_batch_size = 16
  c.train.log_every = 25
  c.train.checkpoint_every = 300
  c.optim = optim.default_config()
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 20
  c.optim.weight_decay = 0.0
  c.mesh = mesh.default_config()
  c.lora = lora.default_config()             # rank > 0: LoRA adapters, base frozen
  c.prompt_tuning = prompt.default_config()  # num_tokens > 0: soft prompt, model frozen
  if preset == "tiny":
    c.data.world_size = "tiny"
    c.train.seq_len = 96
    c.train.steps = 40
    c.train.global_batch_size = 8
    c.train.log_every = 10
    c.train.checkpoint_every = 40
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 5
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/sft.py; use tiny")
  return c
