"""How a training stage tunes its model: fully, with LoRA adapters, or with a soft prompt.

The SFT, reward-model and RLHF stages build a `Tuning` from their config's
optional `lora` / `prompt_tuning` blocks and go through it for the three
things that differ:
  params     full: the model's tree; LoRA: {"base", "lora"}; prompt: {"base", "prompt"}
  mask       Task.trainable_mask: the base is frozen (no optimizer state, bitwise unchanged)
             except `train_paths` (a reward model's scalar head)
  apply      the forward pass (base under stop_gradient, adapters or soft prompt added)
A finished LoRA stage hands later stages plain merged params (`stage_params`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl.adapters import lora as lora_lib
from llmrl.adapters import prompt as prompt_lib
from llmrl.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Tuning:
  """Full fine-tuning (both None), LoRA, or prompt tuning of one model."""
  lora: lora_lib.LoRA | None = None
  prompt: prompt_lib.SoftPrompt | None = None
  prompt_init_ids: tuple[int, ...] = ()
  train_paths: tuple[str, ...] = ()  # top-level base sub-trees kept trainable

  @property
  def kind(self) -> str:
    return "lora" if self.lora else "prompt" if self.prompt else "full"

  @property
  def key(self) -> str | None:
    return {"lora": "lora", "prompt": "prompt", "full": None}[self.kind]

  def init_params(self, base_init: Callable[[jax.Array], Any]) -> Callable[[jax.Array], Any]:
    """rng -> the stage's params tree (boxed base, plain adapters)."""
    if self.kind == "full":
      return base_init

    def init(rng):
      base = base_init(rng)
      return {"base": base, self.key: self.init_adapter(rng, nn.meta.unbox(base))}
    return init

  def init_adapter(self, rng: jax.Array, base: Any):
    """Fresh adapters for (unboxed) base params: LoRA with B = 0, or the soft prompt."""
    if self.lora:
      return self.lora.init(rng)
    table = _embedding(base)
    return self.prompt.init(table, np.asarray(self.prompt_init_ids, np.int32))

  def initial(self, base: Any, seed: int) -> Any:
    """Host params starting from trained base params."""
    if self.kind == "full":
      return base
    adapter = jax.jit(self.init_adapter)(jax.random.PRNGKey(seed), base)
    return {"base": base, self.key: adapter}

  def mask(self, init_params: Callable[[jax.Array], Any]) -> Any:
    """Task.trainable_mask for the stage's params (None = everything trains)."""
    if self.kind == "full":
      return None
    shapes = nn.meta.unbox(jax.eval_shape(init_params, jax.random.PRNGKey(0)))
    base = {k: jax.tree.map(lambda _, k=k: k in self.train_paths, v)
            for k, v in shapes["base"].items()}
    return {"base": base, self.key: jax.tree.map(lambda _: True, shapes[self.key])}

  def apply(self, model: nn.Module, params: Any, ids, positions=None, segment_ids=None,
            *, rng: jax.Array | None = None, **kwargs):
    """Per-token model outputs [b, l, ...] (adapter dropout on when `rng` is given)."""
    if self.kind == "full":
      return model.apply({"params": params}, ids, positions, segment_ids, **kwargs)
    base = _freeze(params["base"], self.train_paths)
    if self.lora:
      use_rng = rng if self.lora.dropout > 0 else None
      return self.lora.apply(base, params["lora"], ids, positions, segment_ids, rng=use_rng,
                             model=model, **kwargs)
    return self.prompt.apply(model, base, params["prompt"], ids, positions, segment_ids,
                             **kwargs)

  def plain(self, params: Any) -> Any:
    """Ordinary model params with the same outputs (LoRA merged). Prompt tuning has none."""
    if self.kind == "full":
      return params
    if self.lora:
      return self.lora.merge(params["base"], params["lora"])
    raise ConfigError("a prompt-tuned stage has no plain params (its soft prompt is not part "
                      "of the model); start later stages from a full or LoRA SFT workdir.")

  def count(self, params: Any) -> int:
    """Trainable parameters of a params tree under this tuning."""
    if self.kind == "full":
      return int(sum(np.size(x) for x in jax.tree.leaves(params)))
    n = sum(np.size(x) for x in jax.tree.leaves(params[self.key]))
    n += sum(np.size(x) for k in self.train_paths for x in jax.tree.leaves(params["base"][k]))
    return int(n)


def _freeze(base: Any, train_paths: tuple[str, ...]) -> Any:
  """stop_gradient on every base sub-tree except `train_paths`."""
  return {k: v if k in train_paths else jax.lax.stop_gradient(v) for k, v in base.items()}


def _embedding(base: Any) -> jax.Array:
  """The token-embedding table [vocab, embed] of a GPT (or a backbone's) params."""
  node = base.get("backbone", base)
  return node["embed"]["embedding"]


def from_config(config: ml_collections.ConfigDict, model: nn.Module, seq_len: int, tok=None,
                train_paths: tuple[str, ...] = ()) -> Tuning:
  """The Tuning a stage config asks for (config.lora / config.prompt_tuning; both optional)."""
  lc, pc = config.get("lora"), config.get("prompt_tuning")
  use_lora, use_prompt = lora_lib.enabled(lc), prompt_lib.enabled(pc)
  if use_lora and use_prompt:
    raise ConfigError("config.lora.rank > 0 and config.prompt_tuning.num_tokens > 0: choose "
                      "one (set the other to 0).")
  if use_lora:
    lora = lora_lib.LoRA.from_config(model, lc, jnp.zeros((1, seq_len), jnp.int32))
    return Tuning(lora=lora, train_paths=train_paths if lc.train_head else ())
  if use_prompt:
    if tok is None:
      raise ConfigError("config.prompt_tuning needs the tokenizer (SFT only).")
    hard = tuple(tok.encode(pc.hard_prompt)) if pc.hard_prompt else ()
    prompt = prompt_lib.SoftPrompt(pc.num_tokens, hard)
    max_len = model.config.max_len
    if seq_len + prompt.prefix_len > max_len:
      raise ConfigError(
          f"config.train.seq_len={seq_len} + the prompt prefix ({pc.num_tokens} soft + "
          f"{len(hard)} hard tokens) exceeds the model's max_len={max_len}; lower "
          "config.train.seq_len or config.prompt_tuning.num_tokens.")
    ids = prompt_lib.init_ids(pc, tok, np.random.RandomState(config.seed))
    return Tuning(prompt=prompt, prompt_init_ids=tuple(int(i) for i in ids),
                  train_paths=train_paths)
  return Tuning(train_paths=train_paths)


def stage_params(stage) -> Any:
  """Plain model params of a finished stage (`llmrl.tasks.lm.Stage`), merging LoRA adapters."""
  params = stage.params
  if not (isinstance(params, dict) and "base" in params):
    return params
  if "lora" in params:
    lora = lora_lib.LoRA.from_config(_model_for(stage, params["base"]), stage.config.lora,
                                     jnp.zeros((1, 1), jnp.int32))
    return lora.merge(params["base"], params["lora"])
  raise ConfigError("the stage was prompt-tuned (its workdir holds a soft prompt, not model "
                    "weights); start later stages from a full or LoRA SFT workdir.")


def stage_policy(stage):
  """(model or DecodeAdapter, params) that llmrl.decoding.generate runs for a finished stage.

  Full and LoRA stages give a GPT and plain (merged) params; a prompt-tuned
  SFT stage gives its soft-prompt decoder and {"base", "soft"}; a LoRA RLHF
  stage (params {"base", "policy": {"lora"}, ...}) gives the merged policy.
  """
  from llmrl.models import GPT
  params = stage.params
  model = GPT(stage.model_config)
  if isinstance(params, dict) and "prompt" in params and "base" in params:
    pc = stage.config.prompt_tuning
    hard = tuple(stage.tokenizer.encode(pc.hard_prompt)) if pc.hard_prompt else ()
    prompt = prompt_lib.SoftPrompt(pc.num_tokens, hard)
    return prompt.decoder(model), {"base": params["base"], "soft": params["prompt"]}
  if isinstance(params, dict) and "lora" in params and "base" not in params:  # RLHF policy
    raise ConfigError("load a LoRA RLHF workdir with params_key='' (the whole tree).")
  if isinstance(params, dict) and "base" in params and "policy" in params:
    lora = lora_lib.LoRA.from_config(model, stage.config.lora, jnp.zeros((1, 1), jnp.int32))
    return model, lora.merge(params["base"], params["policy"]["lora"])
  return model, stage_params(stage)


def _model_for(stage, base: Any) -> nn.Module:
  """The module a stage's params belong to: a reward model (backbone + head) or a GPT."""
  from llmrl.models import GPT
  from llmrl.rlhf.reward import ScalarHeadModel
  return ScalarHeadModel(stage.model_config) if "backbone" in base else GPT(stage.model_config)
