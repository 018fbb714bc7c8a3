r"""T5 pretraining (span corruption) on the embedded generated world.

Command (default: T5 v1.1 style, 2+2 layers, width 128, inputs 128 tokens
(targets 29), 1500 steps, the "small" world):
  python -m experiments.pretrain_t5 --config=configs/pretrain_t5.py --workdir=/tmp/t5
Runtime ~17 min on 2 shared CPU cores (measured side by side with the BERT
default, ~1.5 steps/s); expected final train/loss ~2.2 nats per target token
(accuracy ~0.48), from ~6.9.

Presets (`--config=configs/pretrain_t5.py:PRESET`):
  tiny   width 64, inputs 64 tokens (targets 14), 60 steps on the tiny world:
         ~30 s on 2 CPU cores; train/loss falls from ~5.2 at step 10 to ~3.6
         at step 60.
  v1_0   the default shape in T5 v1.0 style (ReLU, tied and scaled logits).
Any field can be overridden, e.g. --config.objective.noise_density=0.3.
Running the same command again on the same workdir resumes.
"""

import ml_collections

from llmrl import data
from llmrl.tasks.t5 import model_config_block, objective_config_block
from llmrl.train import mesh, optim, trainer


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                       # params init, dropout and span draws
  c.model = model_config_block()
  c.objective = objective_config_block()
  c.data = data.default_config()
  c.data.world_size = "small"      # 400 people; the tiny preset uses the 48-person world
  c.train = trainer.default_config()
  c.train.seq_len = 128            # encoder input length (targets follow from it)
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
    c.model.d_model = 64
    c.model.d_ff = 128
    c.train.seq_len = 64
    c.train.steps = 60
    c.train.global_batch_size = 8
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 10
  elif preset == "v1_0":
    c.model.style = "v1_0"
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/pretrain_t5.py; use tiny or v1_0")
  return c
