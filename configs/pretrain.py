r"""Causal-LM pretraining of a decoder-only transformer on the embedded generated world.

Command (default: a 4-layer, 128-wide GPT-2-style model, 1500 steps of 16x128
tokens on the `small` generated world, ~1.3M tokens):
  python -m experiments.pretrain --config=configs/pretrain.py --workdir=/tmp/pretrain
Runtime ~7 min on an idle 2-core CPU (~7k tokens/s; measured 24 min while other
jobs shared the cores); expected final train/loss ~0.7 nats/token, accuracy ~0.78.

Presets (`--config=configs/pretrain.py:PRESET`):
  tiny   2 layers, width 64, 60 steps: ~1 min on a laptop CPU, loss falls from
         ~6.9 (ln 1024) to below 5.
  llama  the default shape in Llama style (RoPE, RMSNorm, SwiGLU, GQA 4:2).
Any field can be overridden, e.g. --config.train.steps=100 --config.mesh.fsdp=2.
Running the same command again on the same workdir resumes.
"""

from llmrl import data
from llmrl.tasks.lm import model_config_block
from llmrl.train import mesh, optim, trainer

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                       # params init, dropout and data order
  c.z_loss = 0.0                   # PaLM's z-loss weight
  c.model = model_config_block()
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 512
  c.data = data.default_config()
  c.data.world_size = "small"
  c.train = trainer.default_config()
  c.train.seq_len = 128
  c.train.steps = 1500
  c.train.global_batch_size = 16
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.optim = optim.default_config()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.mesh = mesh.default_config()
  if preset == "tiny":
    c.data.world_size = "tiny"
    c.model.num_layers = 2
    c.model.d_model = 64
    c.model.num_heads = 4
    c.model.d_ff = 256
    c.train.seq_len = 96
    c.train.steps = 60
    c.train.global_batch_size = 8
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 10
  elif preset == "llama":
    c.model.style = "llama"
    c.model.num_kv_heads = 2
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/pretrain.py; use tiny or llama")
  return c
