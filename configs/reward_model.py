r"""Reward model from K-way ranked responses (InstructGPT loss), starting from SFT.

Commands (after pretrain and SFT, see configs/sft.py):
  python -m experiments.reward_model --config=configs/reward_model.py --workdir=/tmp/rm --config.init_from=/tmp/sft
Runtime ~2 min on 2 CPU cores; expected reward_model.heldout_accuracy >= 0.8
(written to workdir/eval.json and metrics.jsonl as eval/heldout_accuracy).

LoRA variant (the SFT backbone stays frozen; adapters and the scalar head train):
  ... --config.lora.rank=8 --config.lora.targets=attn/query,attn/value

Presets: `tiny` (after configs/sft.py:tiny): 30 steps, ~30 s.
"""

import ml_collections

from llmrl import data
from llmrl.adapters import lora
from llmrl.tasks.lm import model_config_block
from llmrl.train import mesh, optim, trainer


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""                 # SFT workdir (required)
  c.heldout_fraction = 0.1         # prompts held out for pairwise accuracy
  c.heldout_fact_fraction = 0.0    # facts held out whole (all their prompts): unseen_fact_accuracy
  c.margin = 0.0                   # > 0: reward gaps follow the labeler's score gaps (Llama 2)
  c.shared_prompt = True           # one row per prompt: the prompt once, then its K responses
  c.model = model_config_block()   # replaced by init_from's model
  c.data = data.default_config()
  c.data.world_size = "small"
  c.train = trainer.default_config()
  c.train.seq_len = 96
  c.train.steps = 200
  c.train.global_batch_size = 8    # prompts per step (each with K responses)
  c.train.log_every = 25
  c.train.checkpoint_every = 200
  c.optim = optim.default_config()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 20
  c.optim.weight_decay = 0.0
  c.mesh = mesh.default_config()
  c.lora = lora.default_config()   # rank > 0: LoRA on the backbone (frozen), head trained
  if preset == "tiny":
    c.data.world_size = "tiny"
    c.train.seq_len = 96
    c.train.steps = 30
    c.train.global_batch_size = 4
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 5
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/reward_model.py; use tiny")
  return c
