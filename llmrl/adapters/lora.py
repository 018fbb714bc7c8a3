"""LoRA (Hu et al. 2021): low-rank updates W + (alpha/r)·A·B on chosen projections.

No model file changes: every projection of every family is an
`llmrl.models.layers.Dense` (kernel [*in, *features], e.g. query
[embed, heads, head_dim]). `LoRA.apply` runs the model's own `apply` under
`nn.intercept_methods`, adding (alpha/r)·dropout(x)·A·B to the output of each
chosen Dense call. The adapter params are a separate pytree keyed by module
path, e.g. {"layers_0": {"attn": {"query": {"a": [embed, r], "b": [r, heads, head_dim]}}}},
so the base params stay frozen and are never in the optimizer state.

    lora = LoRA.for_model(model, jnp.zeros((1, 8), jnp.int32), rank=4, alpha=8,
                          targets=("attn/query", "attn/value"))
    adapters = lora.init(rng)                                # B = 0: same logits as the base
    logits = lora.apply(base_params, adapters, input_ids)    # [b, l, vocab]
    merged = lora.merge(base_params, adapters)               # plain params, same logits

Targets are fnmatch patterns matched against the whole module path or its
tail: "attn/query" picks layers_*/attn/query, "mlp/*" every MLP projection,
"backbone/layers_0/*" one block of a reward model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl.config import ConfigError, check_positive
from llmrl.models.layers import Dense


def default_config() -> ml_collections.ConfigDict:
  """The optional `config.lora` block of SFT, reward-model and RLHF configs (off by default)."""
  c = ml_collections.ConfigDict()
  c.rank = 0                          # r; 0 = off (full fine-tuning)
  c.alpha = 16.0                      # the update is scaled by alpha / rank
  c.dropout = 0.0                     # dropout on the adapter's input x (training only)
  c.targets = "attn/query,attn/value"  # comma-separated module-path patterns
  c.train_head = True                 # reward model / critic: the scalar head stays trainable
  return c


def enabled(c: ml_collections.ConfigDict | None) -> bool:
  return c is not None and c.rank > 0


def targets_of(c: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(t.strip() for t in c.targets.split(",") if t.strip())


@dataclasses.dataclass(frozen=True)
class Spec:
  """One adapted projection: kernel [*in_shape, *out_shape] contracted over len(in_shape)."""
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]


def _path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def find_projections(model: nn.Module, *args, **kwargs) -> dict[str, Spec]:
  """{module path: Spec} of every Dense the model calls on these (example) inputs.

  Runs `model.init` abstractly (jax.eval_shape), so nothing is materialised.
  """
  found: dict[str, Spec] = {}

  def record(next_fun, a, kw, context):
    out = next_fun(*a, **kw)
    mod = context.module
    if isinstance(mod, Dense) and context.method_name == "__call__":
      x = a[0]
      found[_path(mod)] = Spec(tuple(x.shape[x.ndim - mod.in_axes:]),
                               tuple(out.shape[x.ndim - mod.in_axes:]))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, *args, **kwargs))
  return found


def match(paths: Sequence[str], patterns: Sequence[str]) -> list[str]:
  """Paths chosen by the patterns (whole path or its tail); ValueError for a dead pattern."""
  chosen = []
  for pattern in patterns:
    hits = [p for p in paths if fnmatch.fnmatchcase(p, pattern)
            or fnmatch.fnmatchcase(p, "*/" + pattern)]
    if not hits:
      some = ", ".join(sorted(paths)[:8])
      raise ConfigError(f"config.lora.targets: {pattern!r} matches no projection of this "
                        f"model; projections are e.g. {some} (patterns match the path or "
                        "its tail, like 'attn/query' or 'mlp/*').")
    chosen += [p for p in hits if p not in chosen]
  return sorted(chosen)


def _nest(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    parts = path.split("/")
    for key in parts[:-1]:
      node = node.setdefault(key, {})
    node[parts[-1]] = value
  return out


def _get(tree: dict, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {"a/b/c": leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


@dataclasses.dataclass(frozen=True)
class LoRA:
  """Adapters of rank `rank` on `specs` (path -> Spec), scaled by alpha / rank."""
  specs: tuple[tuple[str, Spec], ...]
  rank: int
  alpha: float
  dropout: float = 0.0

  @classmethod
  def for_model(cls, model: nn.Module, *example_args, rank: int, alpha: float,
                targets: Sequence[str], dropout: float = 0.0, **example_kwargs) -> "LoRA":
    """Adapters on the model's projections whose paths match `targets`."""
    check_positive("lora.rank", rank)
    check_positive("lora.alpha", alpha)
    if not 0.0 <= dropout < 1.0:
      raise ConfigError(f"config.lora.dropout={dropout} must be in [0, 1).")
    projections = find_projections(model, *example_args, **example_kwargs)
    if any("layers" in p.split("/") for p in projections):  # GPTConfig.scan_layers
      raise ConfigError(
        "LoRA: the model runs its blocks with scan_layers=True (one module shared by all "
        "layers); set config.model.scan_layers=False (llmrl.models.gpt.unscan_params converts "
        "the params)")
    chosen = match(list(projections), targets)
    return cls(tuple((p, projections[p]) for p in chosen), rank, float(alpha), float(dropout))

  @classmethod
  def from_config(cls, model: nn.Module, c: ml_collections.ConfigDict, *example_args,
                  **example_kwargs) -> "LoRA":
    return cls.for_model(model, *example_args, rank=c.rank, alpha=c.alpha,
                         targets=targets_of(c), dropout=c.dropout, **example_kwargs)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def paths(self) -> list[str]:
    return [p for p, _ in self.specs]

  def init(self, rng: jax.Array) -> dict:
    """A ~ U(±1/sqrt(fan_in)) (as peft), B = 0: the adapted model starts equal to the base."""
    flat = {}
    for i, (path, spec) in enumerate(self.specs):
      fan_in = math.prod(spec.in_shape)
      bound = 1.0 / math.sqrt(fan_in)
      a = jax.random.uniform(jax.random.fold_in(rng, i), (*spec.in_shape, self.rank),
                             jnp.float32, -bound, bound)  # [*in, r]
      b = jnp.zeros((self.rank, *spec.out_shape), jnp.float32)  # [r, *out]
      flat[f"{path}/a"], flat[f"{path}/b"] = a, b
    return _nest(flat)

  def count(self) -> int:
    """Trainable adapter parameters: r·(fan_in + fan_out) per adapted projection."""
    return sum(self.rank * (math.prod(s.in_shape) + math.prod(s.out_shape))
               for _, s in self.specs)

  def interceptor(self, adapters: dict, rng: jax.Array | None = None):
    """The method interceptor adding scale·dropout(x)·A·B to each adapted Dense call."""
    index = {p: i for i, p in enumerate(self.paths)}
    drop = self.dropout if rng is not None else 0.0

    def intercept(next_fun, args, kwargs, context):
      mod = context.module
      if not isinstance(mod, Dense) or context.method_name != "__call__":
        return next_fun(*args, **kwargs)
      path = _path(mod)
      if path not in index:
        return next_fun(*args, **kwargs)
      y = next_fun(*args, **kwargs)  # [..., *out]
      x = args[0]  # [..., *in]
      if drop > 0.0:
        keep = jax.random.bernoulli(jax.random.fold_in(rng, index[path]), 1.0 - drop, x.shape)
        x = jnp.where(keep, x / (1.0 - drop), 0.0)
      ab = _get(adapters, path)
      h = jnp.tensordot(x.astype(mod.dtype), ab["a"].astype(mod.dtype),
                        axes=mod.in_axes)  # [..., r]
      delta = jnp.tensordot(h, ab["b"].astype(mod.dtype), axes=1)  # [..., *out]
      return y + (self.scale * delta).astype(y.dtype)

    return intercept

  def apply(self, base_params, adapters: dict | None, *args, rng: jax.Array | None = None,
            model: nn.Module | None = None, **kwargs):
    """`model.apply({"params": base_params}, *args, **kwargs)` with the adapters added.

    `adapters=None` runs the plain base (adapters off). `rng` turns adapter
    dropout on (training). `model` must be given (kept a keyword so the call
    reads like model.apply).
    """
    if model is None:
      raise TypeError("LoRA.apply needs model=...")
    if adapters is None:
      return model.apply({"params": base_params}, *args, **kwargs)
    with nn.intercept_methods(self.interceptor(adapters, rng)):
      return model.apply({"params": base_params}, *args, **kwargs)

  def delta(self, adapters: dict, path: str) -> jax.Array:
    """scale·A·B reshaped to the kernel: [*in, *out]."""
    ab = _get(adapters, path)
    return self.scale * jnp.tensordot(ab["a"], ab["b"], axes=1)

  def merge(self, base_params: dict, adapters: dict, sign: float = 1.0) -> dict:
    """Base params with each adapted kernel replaced by kernel + scale·A·B."""
    out = jax.tree.map(lambda x: x, base_params)  # new containers, shared leaves

    def edit(tree, path):
      *parents, last = path.split("/")
      for key in parents:
        tree[key] = dict(tree[key])
        tree = tree[key]
      tree[last] = dict(tree[last])
      return tree[last]

    for path in self.paths:
      node = edit(out, path)
      kernel = node["kernel"]
      node["kernel"] = (kernel + sign * self.delta(adapters, path).astype(kernel.dtype))
    return out

  def unmerge(self, merged_params: dict, adapters: dict) -> dict:
    """The inverse of `merge` (kernel - scale·A·B), up to float rounding."""
    return self.merge(merged_params, adapters, sign=-1.0)

  def metadata(self) -> dict:
    return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
            "paths": self.paths,
            "specs": {p: [list(s.in_shape), list(s.out_shape)] for p, s in self.specs}}


ADAPTER_FILE = "adapter.safetensors"


def save_adapter(directory: str, lora: LoRA, adapters: dict) -> str:
  """Writes only the adapters (safetensors, with their LoRA settings as metadata)."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, ADAPTER_FILE)
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32))
             for k, v in flatten(jax.device_get(adapters)).items()}
  save_file(tensors, path, metadata={"llmrl_lora": json.dumps(lora.metadata())})
  return path


def load_adapter(directory: str) -> tuple[LoRA, dict]:
  """(LoRA, adapters) written by `save_adapter`."""
  from safetensors import safe_open
  from safetensors.numpy import load_file
  path = os.path.join(directory, ADAPTER_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {directory} holds no llmrl LoRA adapter "
                            "(save one with llmrl.adapters.lora.save_adapter).")
  with safe_open(path, "numpy") as f:
    meta = json.loads(f.metadata()["llmrl_lora"])
  specs = tuple((p, Spec(tuple(meta["specs"][p][0]), tuple(meta["specs"][p][1])))
                for p in meta["paths"])
  lora = LoRA(specs, int(meta["rank"]), float(meta["alpha"]), float(meta["dropout"]))
  return lora, _nest({k: jnp.asarray(v) for k, v in load_file(path).items()})


@dataclasses.dataclass(frozen=True)
class LoRADecoder:
  """A DecodeAdapter running a cached decoder with adapters applied on the fly.

  params = {"base": base params, "lora": adapters}: sampling from a LoRA
  policy without materialising merged weights (one base in memory).
  """
  inner: Any  # llmrl.decoding.adapters.CachedDecoder
  lora: LoRA

  @property
  def vocab_size(self) -> int:
    return self.inner.vocab_size

  def check_lengths(self, prompt_len: int, max_new_tokens: int) -> None:
    self.inner.check_lengths(prompt_len, max_new_tokens)

  def prefill(self, params, ids, mask, max_new_tokens: int):
    with nn.intercept_methods(self.lora.interceptor(params["lora"])):
      return self.inner.prefill(params["base"], ids, mask, max_new_tokens)

  def beam_prefill(self, params, ids, mask, max_new_tokens: int, num_beams: int):
    with nn.intercept_methods(self.lora.interceptor(params["lora"])):
      return self.inner.beam_prefill(params["base"], ids, mask, max_new_tokens, num_beams)

  def step(self, params, state, tokens):
    with nn.intercept_methods(self.lora.interceptor(params["lora"])):
      return self.inner.step(params["base"], state, tokens)

  def __getattr__(self, name):
    # Optional state-only hooks of the inner decoder (select_beams, grow, ...): same state.
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(object.__getattribute__(self, "inner"), name)


def decoder(model, lora: LoRA) -> LoRADecoder:
  """`LoRADecoder` for an llmrl GPT: decoding.generate(decoder(model, lora), {"base", "lora"}, ...)."""
  from llmrl.decoding.adapters import CachedDecoder
  return LoRADecoder(CachedDecoder(model), lora)
