"""Hugging Face transformers checkpoints <-> llmrl models.

    model, params = hf.load("path/to/hf_checkpoint")     # config.json + *.safetensors
    logits = model.apply({"params": params}, input_ids)  # [batch, length, vocab]
    hf.save(model, params, "out_dir")  # then AutoModelForCausalLM.from_pretrained("out_dir")

Supported `model_type`s are the keys of `CONVERTERS`: gpt2, llama, bert and
t5 (see hf_decoders.py and hf_encoders.py), for load and save, and mixtral
(load only: a GPT with MoE blocks, dropless top-k routing as transformers). For T5,
`model.apply({"params": params}, input_ids, decoder_input_ids, segment_ids=mask)`
gives [batch, dec_len, vocab]; for BERT, `model.apply({"params": params},
input_ids, token_type_ids=..., segment_ids=mask)` gives the MLM logits (a
BertModel without an MLM head gives its hidden states).
Tensors are read with `safetensors.numpy`, so loading needs no torch.
"""

import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from safetensors.numpy import load_file, save_file

from llmrl.interop.hf_decoders import (
  GPT2,
  LLAMA,
  MIXTRAL,
  Converter,
  is_ignored,
  normalize_keys,
)
from llmrl.interop.hf_encoders import BERT, T5_CONVERTER
from llmrl.models.gpt import GPT, GPTConfig, scan_params, unscan_params

CONVERTERS = {"gpt2": GPT2, "llama": LLAMA, "mixtral": MIXTRAL, "bert": BERT, "t5": T5_CONVERTER}
_SUPPORTED = ", ".join(sorted(CONVERTERS))
_FAMILY = {c.make_config: c for c in CONVERTERS.values() if c.make_config is not None}


def _fail(path, msg: str):
  raise ValueError(f"{path}: {msg}")


def _read_config(path: str) -> dict:
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    _fail(
      path, "no config.json; expected a Hugging Face checkpoint folder (save_pretrained output)"
    )
  with open(file) as f:
    return json.load(f)


def _converter(path: str, hf_config: dict) -> Converter:
  model_type = hf_config.get("model_type")
  if model_type not in CONVERTERS:
    arch = hf_config.get("architectures")
    _fail(
      path,
      f"model_type {model_type!r} (architectures {arch}) is not supported by llmrl.interop.hf; "
      f"supported model_types: {_SUPPORTED}",
    )
  return CONVERTERS[model_type]


def read_tensors(path: str) -> dict:
  """All tensors of a checkpoint folder as numpy arrays (single file or sharded index)."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.isfile(single):
    files = ["model.safetensors"]
  else:
    _fail(
      path,
      f"no model.safetensors or model.safetensors.index.json (found {sorted(os.listdir(path))}); "
      "llmrl reads safetensors only: re-save with save_pretrained(path, safe_serialization=True)",
    )
  tensors = {}
  for name in files:
    file = os.path.join(path, name)
    if not os.path.isfile(file):
      _fail(path, f"shard {name} listed in model.safetensors.index.json is missing")
    tensors.update(load_file(file))
  return tensors


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path):
  for key in path:
    tree = tree[key]
  return tree


def _param_shapes(cfg) -> dict:
  """{path tuple: shape} of the model's params, without materialising them."""
  converter = _FAMILY.get(type(cfg))
  if converter is not None:
    tree = converter.param_shapes(cfg)
  else:
    ids = jnp.zeros((1, 1), jnp.int32)
    tree = nn.unbox(jax.eval_shape(GPT(cfg).init, {"params": jax.random.key(0)}, ids))["params"]
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {tuple(k.key for k in p): tuple(s.shape) for p, s in leaves}


def _preview(keys, n=8) -> str:
  keys = sorted(keys)
  return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load(path: str, *, adapter: Optional[str] = None, **config_overrides):
  """Load an HF checkpoint folder as (model, params): GPT, Bert or T5 by model_type.

  config_overrides replace config fields after conversion (e.g.
  dtype=jnp.bfloat16, attention_impl="jax", remat="full"). Params are plain
  (unboxed) nested dicts in `param_dtype` (float32 by default). `adapter`: a
  peft LoRA folder (adapter_config.json + adapter_model.safetensors) merged
  into the returned params (llmrl.adapters.hf_peft.load keeps it separate).
  """
  path = os.fspath(path)
  if adapter is not None:
    from llmrl.adapters import hf_peft

    return hf_peft.load(path, adapter, **config_overrides)
  hf_config = _read_config(path)
  converter = _converter(path, hf_config)
  make_config = converter.make_config or GPTConfig
  try:
    kwargs = converter.config_from_hf(hf_config)
  except (KeyError, ValueError, TypeError) as e:
    _fail(path, f"cannot convert {hf_config.get('model_type')} config.json: {e}")
  tensors = normalize_keys(hf_config["model_type"], read_tensors(path))
  if converter.normalize is not None:
    tensors = converter.normalize(tensors)
  try:
    if converter.refine is not None:  # e.g. which heads / untied lm_head the file holds
      kwargs = converter.refine(kwargs, tensors)
    cfg = make_config(**{**kwargs, **config_overrides})
  except (KeyError, ValueError, TypeError) as e:
    _fail(path, f"cannot convert {hf_config.get('model_type')} config.json: {e}")
  # scan_layers=True: convert to layers_{i} as usual, stack them at the end.
  scanned = isinstance(cfg, GPTConfig) and cfg.scan_layers
  if scanned:
    cfg = cfg.replace(scan_layers=False)
  entries = converter.entries(cfg)
  wanted = {e.hf_key for e in entries}
  missing = wanted - set(tensors)
  if missing:
    _fail(path, f"missing tensors for {converter.architecture}: {_preview(missing)}")
  extra = {k for k in tensors if k not in wanted and not is_ignored(converter, k)}
  if isinstance(cfg, GPTConfig) and cfg.tie_embeddings:
    extra.discard("lm_head.weight")  # some tied checkpoints store the shared matrix twice
  if extra:
    _fail(
      path,
      f"unexpected tensors (not part of {converter.architecture} as configured): {_preview(extra)}",
    )

  shapes = _param_shapes(cfg)
  params = {}
  for e in entries:
    x = tensors[e.hf_key]
    try:
      values = e.to_ours(np.asarray(x))
    except ValueError as err:
      _fail(path, f"tensor {e.hf_key} has shape {x.shape}, which does not fit the config: {err}")
    for p, v in zip(e.paths, values):
      if tuple(v.shape) != shapes[p]:
        _fail(path, f"tensor {e.hf_key} has shape {x.shape}; param {'/'.join(p)} needs {shapes[p]}")
      _set(params, p, jnp.asarray(v, cfg.param_dtype))
  if scanned:
    return GPT(cfg.replace(scan_layers=True)), scan_params(params)
  return (converter.model or GPT)(cfg), params


def _choose_type(cfg) -> str:
  for model_type, converter in CONVERTERS.items():  # BERT, T5: one model_type per config class
    if converter.make_config is not None and isinstance(cfg, converter.make_config):
      why = converter.why_not(cfg)
      if why is not None:
        raise ValueError(
          f"{type(cfg).__name__} cannot be written as a Hugging Face checkpoint ({why})"
        )
      return model_type
  reasons = []
  for model_type, converter in CONVERTERS.items():
    if converter.make_config is not None:  # not a decoder-only family
      continue
    why = converter.why_not(cfg)
    if why is None:
      return model_type
    reasons.append(f"{model_type}: {why}")
  raise ValueError(
    f"GPTConfig cannot be written as a Hugging Face checkpoint ({'; '.join(reasons)})"
  )


def save(model: GPT, params, path: str, extra_config: Optional[dict] = None) -> None:
  """Write config.json + model.safetensors for `transformers.AutoModelForCausalLM`.

  Bert and T5 models are written as the matching transformers class
  (BertForPreTraining, BertForMaskedLM, ..., T5ForConditionalGeneration).

  extra_config entries (e.g. bos_token_id, eos_token_id) are merged into config.json.
  """
  path = os.fspath(path)
  cfg = model.config
  model_type = _choose_type(cfg)
  converter = CONVERTERS[model_type]
  params = nn.unbox(params)
  params = params.get("params", params)
  if isinstance(cfg, GPTConfig) and cfg.scan_layers:  # stacked params["layers"] -> layers_{i}
    cfg, params = cfg.replace(scan_layers=False), unscan_params(params)
  shapes = _param_shapes(cfg)
  tensors, used = {}, set()
  for e in converter.entries(cfg):
    try:
      values = tuple(np.asarray(_get(params, p), np.float32) for p in e.paths)
    except KeyError:
      raise ValueError(
        f"params lack {['/'.join(p) for p in e.paths]} needed for {e.hf_key}"
      ) from None
    for p, v in zip(e.paths, values):
      if tuple(v.shape) != shapes[p]:
        raise ValueError(f"param {'/'.join(p)} has shape {v.shape}, config needs {shapes[p]}")
    used.update(e.paths)
    tensors[e.hf_key] = np.ascontiguousarray(e.to_hf(values))
  leftover = set(shapes) - used
  if leftover:
    raise ValueError(
      f"params {_preview('/'.join(p) for p in leftover)} have no {model_type} equivalent"
    )
  hf_config = dict(
    model_type=model_type,
    architectures=[converter.architecture],
    dtype="float32",
    torch_dtype="float32",
  )
  hf_config.update(converter.config_to_hf(cfg))  # may name another architecture (BERT heads)
  hf_config.update(extra_config or {})
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
