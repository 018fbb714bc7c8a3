"""Small shared pieces for engine tests: a tiny GPT task on random tokens."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl.models import GPT, GPTConfig
from llmrl.objectives.lm import causal_lm_loss
from llmrl.train import mesh, optim, trainer


class RandomTokens:
  """Deterministic random-token batches; global batch k is the same whatever the sharding."""

  def __init__(self, batch_size, seq_len, vocab, shard_index=0, shard_count=1,
               nan_at_batch=None):
    self.b, self.l, self.v = batch_size, seq_len, vocab
    self.shard, self.count, self.i = shard_index, shard_count, 0
    self.nan_at = nan_at_batch

  def __next__(self):
    rng = np.random.RandomState(1000 + self.i)
    ids = rng.randint(1, self.v, size=(self.b * self.count, self.l + 1)).astype(np.int32)
    ids = ids[self.shard * self.b:(self.shard + 1) * self.b]
    weights = np.ones((self.b, self.l), np.float32)
    if self.nan_at is not None and self.i == self.nan_at:
      weights[0, 0] = np.nan
    self.i += 1
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": weights}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, s):
    self.i = s["i"]


def tiny_gpt(**kw) -> GPT:
  base = dict(vocab_size=64, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=64)
  base.update(kw)
  return GPT(GPTConfig(**base))


def gpt_task(model: GPT, data) -> trainer.Task:
  def init_params(rng):
    return model.init({"params": rng}, jnp.zeros((1, 8), jnp.int32))["params"]

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["inputs"])
    return causal_lm_loss(logits, batch["targets"], batch["weights"])

  return trainer.Task(init_params=init_params, loss_fn=loss_fn, data=data,
                      tokens_per_step=1.0, flops_per_step=1.0)


def engine_config(steps=4, batch=8, **mesh_sizes) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.train = trainer.default_config()
  c.train.steps, c.train.global_batch_size = steps, batch
  c.train.log_every, c.train.checkpoint_every = 1, steps
  c.train.async_checkpoint = False
  c.optim = optim.default_config()
  c.optim.warmup_steps = 1
  c.optim.learning_rate = 1e-2
  c.mesh = mesh.default_config()
  for k, v in mesh_sizes.items():
    c.mesh[k] = v
  return c


def generated_rows(out, pad_id: int) -> list[list[int]]:
  """A GenerateOutput's rows cut at their lengths; checks pad_id fills the rest."""
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for row, n in zip(tokens, lengths):
    assert (row[n:] == pad_id).all()  # pad_id after EOS
  return [row[:n].tolist() for row, n in zip(tokens, lengths)]


def left_pad_torch(prompts: list[list[int]], pad_id: int):
  """Left-padded torch (input_ids, attention_mask) [b, p] for transformers' generate."""
  import torch
  p = max(len(r) for r in prompts)
  ids = torch.tensor([[pad_id] * (p - len(r)) + r for r in prompts])
  mask = torch.tensor([[0] * (p - len(r)) + [1] * len(r) for r in prompts])
  return ids, mask
