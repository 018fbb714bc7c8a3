"""Hugging Face peft LoRA adapter folders -> llmrl LoRA adapters (GPT-2 and Llama).

    model, params = llmrl.interop.hf.load("base_dir")
    lora, adapters = hf_peft.load_adapter("adapter_dir", model)   # LoRA params
    logits = lora.apply(params, adapters, ids, model=model)
    merged = lora.merge(params, adapters)                          # or one plain tree
    model, merged = hf_peft.load("base_dir", "adapter_dir")        # both steps

A peft folder holds adapter_config.json (r, lora_alpha, target_modules,
use_rslora, ...) and adapter_model.safetensors with, per adapted module,
`base_model.model.<module>.lora_A.weight` [r, in] and `lora_B.weight` [out, r]
(torch layout for both nn.Linear and GPT-2's Conv1D). peft computes
y = W x + s·B(A x) with s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA);
llmrl's adapters are a = A^T [*in, r], b = B^T [r, *out] with the same s.
GPT-2's fused c_attn (q|k|v on the output axis) becomes three adapters
sharing A, each with its third of B's rows.
"""

from __future__ import annotations

import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np

from llmrl.adapters.lora import LoRA, find_projections

# peft module-name regex -> [(llmrl path template, part index, parts)]: the B rows split
# into `parts` equal blocks and block `part index` belongs to that llmrl projection.
_LLAMA = {
  r"model\.layers\.(\d+)\.self_attn\.q_proj": [("layers_{}/attn/query", 0, 1)],
  r"model\.layers\.(\d+)\.self_attn\.k_proj": [("layers_{}/attn/key", 0, 1)],
  r"model\.layers\.(\d+)\.self_attn\.v_proj": [("layers_{}/attn/value", 0, 1)],
  r"model\.layers\.(\d+)\.self_attn\.o_proj": [("layers_{}/attn/out", 0, 1)],
  r"model\.layers\.(\d+)\.mlp\.gate_proj": [("layers_{}/mlp/wi_gate", 0, 1)],
  r"model\.layers\.(\d+)\.mlp\.up_proj": [("layers_{}/mlp/wi_up", 0, 1)],
  r"model\.layers\.(\d+)\.mlp\.down_proj": [("layers_{}/mlp/wo", 0, 1)],
}
_GPT2 = {
  r"transformer\.h\.(\d+)\.attn\.c_attn": [("layers_{}/attn/query", 0, 3),
                                            ("layers_{}/attn/key", 1, 3),
                                            ("layers_{}/attn/value", 2, 3)],
  r"transformer\.h\.(\d+)\.attn\.c_proj": [("layers_{}/attn/out", 0, 1)],
  r"transformer\.h\.(\d+)\.mlp\.c_fc": [("layers_{}/mlp/wi", 0, 1)],
  r"transformer\.h\.(\d+)\.mlp\.c_proj": [("layers_{}/mlp/wo", 0, 1)],
}
TABLES = {"llama": _LLAMA, "gpt2": _GPT2}


def _fail(path: str, msg: str):
  raise ValueError(f"{path}: {msg}")


def _read(path: str) -> tuple[dict, dict]:
  from safetensors.numpy import load_file
  cfg_file = os.path.join(path, "adapter_config.json")
  weights = os.path.join(path, "adapter_model.safetensors")
  if not os.path.isfile(cfg_file):
    _fail(path, "no adapter_config.json; expected a peft adapter folder (save_pretrained output)")
  if not os.path.isfile(weights):
    _fail(path, "no adapter_model.safetensors; re-save the adapter with "
          "save_pretrained(path, safe_serialization=True)")
  with open(cfg_file) as f:
    config = json.load(f)
  return config, load_file(weights)


def _check_config(path: str, c: dict) -> None:
  if c.get("peft_type", "LORA") != "LORA":
    _fail(path, f"peft_type={c.get('peft_type')!r}: only LORA adapters are supported")
  if c.get("bias", "none") != "none":
    _fail(path, f"bias={c['bias']!r}: only bias='none' LoRA adapters are supported")
  for key in ("rank_pattern", "alpha_pattern"):
    if c.get(key):
      _fail(path, f"{key} is set: per-module ranks/alphas are not supported")
  if c.get("modules_to_save"):
    _fail(path, f"modules_to_save={c['modules_to_save']}: fully trained modules are not "
          "supported, only LoRA matrices")
  if c.get("use_dora"):
    _fail(path, "use_dora=true: DoRA adapters are not supported")


def model_type_of(model) -> str:
  cfg = model.config
  return "llama" if cfg.style == "llama" else "gpt2"


def load_adapter(path: str, model, model_type: str | None = None) -> tuple[LoRA, dict]:
  """(LoRA, adapters) of a peft adapter folder for an llmrl GPT loaded from the base model."""
  path = os.fspath(path)
  config, tensors = _read(path)
  _check_config(path, config)
  model_type = model_type or model_type_of(model)
  table = TABLES.get(model_type)
  if table is None:
    _fail(path, f"peft adapters for model_type {model_type!r} are not supported "
          f"(supported: {sorted(TABLES)})")
  r = int(config["r"])
  alpha = float(config["lora_alpha"])
  if config.get("use_rslora"):
    alpha = alpha * math.sqrt(r)  # peft scales by alpha/sqrt(r); llmrl by alpha/r
  projections = find_projections(model, jnp.zeros((1, 1), jnp.int32))
  pairs: dict[str, dict] = {}
  for key, value in tensors.items():
    m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
    if m is None:
      _fail(path, f"unexpected tensor {key} (expected <module>.lora_A.weight / lora_B.weight)")
    pairs.setdefault(m.group(1), {})[m.group(2)] = np.asarray(value, np.float32)
  flat: dict[str, np.ndarray] = {}
  for module, ab in sorted(pairs.items()):
    if set(ab) != {"A", "B"}:
      _fail(path, f"{module} has lora_{list(ab)[0]} but not its partner")
    targets = None
    for pattern, spec in table.items():
      m = re.fullmatch(pattern, module)
      if m:
        targets = [(t.format(m.group(1)), part, parts) for t, part, parts in spec]
    if targets is None:
      _fail(path, f"adapted module {module} has no llmrl {model_type} projection "
            f"(supported: {', '.join(table)})")
    a_t, b_t = ab["A"], ab["B"]  # [r, in], [out, r]
    for ours, part, parts in targets:
      if ours not in projections:
        _fail(path, f"{module} maps to {ours}, which this model does not have")
      spec = projections[ours]
      rows = b_t.shape[0] // parts
      b_part = b_t[part * rows:(part + 1) * rows]  # [out/parts, r]
      try:
        flat[f"{ours}/a"] = a_t.T.reshape(*spec.in_shape, r)  # [*in, r]
        flat[f"{ours}/b"] = b_part.T.reshape(r, *spec.out_shape)  # [r, *out]
      except ValueError as e:
        _fail(path, f"{module}: lora_A {a_t.shape} / lora_B {b_t.shape} do not fit {ours} "
              f"{spec.in_shape} -> {spec.out_shape}: {e}")
  specs = tuple(sorted((p.rsplit("/", 1)[0], projections[p.rsplit("/", 1)[0]])
                       for p in flat if p.endswith("/a")))
  from llmrl.adapters.lora import _nest
  lora = LoRA(specs, r, alpha, 0.0)
  return lora, _nest({k: jnp.asarray(v) for k, v in flat.items()})


def load(base_path: str, adapter_path: str, *, merge: bool = True, **config_overrides):
  """An HF base checkpoint plus a peft adapter: (model, merged params), or with
  merge=False (model, base params, lora, adapters)."""
  from llmrl.interop import hf
  model, params = hf.load(base_path, **config_overrides)
  with open(os.path.join(base_path, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  lora, adapters = load_adapter(adapter_path, model, model_type)
  if merge:
    return model, lora.merge(params, adapters)
  return model, params, lora, adapters
