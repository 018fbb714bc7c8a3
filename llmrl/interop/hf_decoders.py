"""Converters between HF decoder-only checkpoints (GPT-2, Llama) and llmrl GPT.

Each converter maps an HF `config.json` dict to GPTConfig keyword arguments
and back, and lists `Entry`s: one HF tensor <-> one or more llmrl params with
the transforms both ways. `llmrl.interop.hf` drives load and save from the
same table, so the two directions cannot drift apart.

Layouts: HF GPT-2 `Conv1D` weights are [in, out] (c_attn packs q|k|v on the
output axis); HF Llama `nn.Linear` weights are [out, in]. llmrl kernels are
[in, out] with heads split out: q/k/v [embed, heads, head_dim], out
[heads, head_dim, embed].
"""

import dataclasses
import re
from typing import Callable, Optional, Tuple

import numpy as np

from llmrl.models.gpt import GPTConfig
from llmrl.models.moe import MoEConfig

Path = Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor and the llmrl params it becomes."""

  hf_key: str
  paths: Tuple[Path, ...]
  to_ours: Callable  # np.ndarray -> tuple of arrays, one per path
  to_hf: Callable  # tuple of arrays -> np.ndarray


def _same(hf_key: str, path: Path, fwd=lambda x: x, back=lambda x: x) -> Entry:
  return Entry(hf_key, (path,), lambda x: (fwd(x),), lambda xs: back(xs[0]))


def _linear(hf_key: str, path: Path, in_shape, out_shape) -> Entry:
  """nn.Linear weight [out, in] <-> kernel [*in_shape, *out_shape]."""
  return _same(
    hf_key,
    path,
    lambda w: w.T.reshape(*in_shape, *out_shape),  # [out, in] -> [*in, *out]
    lambda k: k.reshape(int(np.prod(in_shape)), int(np.prod(out_shape))).T,  # -> [out, in]
  )


@dataclasses.dataclass(frozen=True)
class Converter:
  """How one HF `model_type` maps onto GPTConfig and the GPT param tree."""

  architecture: str  # the HF class written to config.json "architectures"
  config_from_hf: Callable[[dict], dict]
  config_to_hf: Callable[[GPTConfig], dict]
  entries: Callable[[GPTConfig], list]
  why_not: Callable[[GPTConfig], Optional[str]]  # None if cfg can be saved as this type
  ignored: str  # regex of HF keys that are buffers, not parameters
  # Other families (llmrl/interop/hf_encoders.py) set these; None = the GPT defaults.
  model: Optional[Callable] = None  # config -> linen module
  make_config: Optional[Callable] = None  # **kwargs -> config
  param_shapes: Optional[Callable] = None  # config -> unboxed ShapeDtypeStruct tree
  normalize: Optional[Callable[[dict], dict]] = None  # tensors -> tensors (key spellings)
  refine: Optional[Callable[[dict, dict], dict]] = None  # (config kwargs, tensors) -> kwargs


# ----------------------------------------------------------------------- GPT-2
_GPT2_ACTIVATIONS = {
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "gelu": "gelu_exact",
  "relu": "relu",
}


def _gpt2_config_from_hf(c: dict) -> dict:
  act = c.get("activation_function", "gelu_new")
  if act not in _GPT2_ACTIVATIONS:
    raise ValueError(
      f"activation_function={act!r} is not supported; supported: {sorted(_GPT2_ACTIVATIONS)}"
    )
  for flag, ok in (
    ("scale_attn_by_inverse_layer_idx", False),
    ("scale_attn_weights", True),
    ("add_cross_attention", False),
  ):
    if c.get(flag, ok) != ok:
      raise ValueError(f"{flag}={c[flag]} is not supported (llmrl needs {ok})")
  return dict(
    vocab_size=c["vocab_size"],
    max_len=c["n_positions"],
    num_layers=c["n_layer"],
    d_model=c["n_embd"],
    num_heads=c["n_head"],
    d_ff=c.get("n_inner") or 4 * c["n_embd"],
    style="gpt2",
    mlp=_GPT2_ACTIVATIONS[act],
    norm_eps=c.get("layer_norm_epsilon", 1e-5),
    tie_embeddings=c.get("tie_word_embeddings", True),
  )


def _gpt2_config_to_hf(cfg: GPTConfig) -> dict:
  act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[cfg.mlp_type]
  return dict(
    vocab_size=cfg.vocab_size,
    n_positions=cfg.max_len,
    n_layer=cfg.num_layers,
    n_embd=cfg.d_model,
    n_head=cfg.num_heads,
    n_inner=cfg.d_ff,
    activation_function=act,
    layer_norm_epsilon=cfg.norm_eps,
    tie_word_embeddings=cfg.tie_embeddings,
    resid_pdrop=cfg.dropout_rate,
    embd_pdrop=cfg.dropout_rate,
    attn_pdrop=0.0,
    bos_token_id=None,
    eos_token_id=None,
  )


def _gpt2_why_not(cfg: GPTConfig) -> Optional[str]:
  if (cfg.position_type, cfg.norm_type, cfg.has_bias) != ("learned", "layernorm", True):
    return "GPT-2 needs learned positions, LayerNorm and biases"
  if cfg.mlp_type not in ("gelu", "gelu_exact", "relu"):
    return f"GPT-2 has no {cfg.mlp_type} MLP"
  if cfg.kv_heads != cfg.num_heads or cfg.d_attn != cfg.d_model:
    return "GPT-2 needs num_kv_heads == num_heads and num_heads * head_dim == d_model"
  if cfg.moe is not None:
    return "GPT-2 has no mixture-of-experts layers"
  return None


def _gpt2_entries(cfg: GPTConfig) -> list:
  d, h, hd = cfg.d_model, cfg.num_heads, cfg.d_head
  out = [
    _same("transformer.wte.weight", ("embed", "embedding")),
    _same("transformer.wpe.weight", ("pos_embed", "embedding")),
    _same("transformer.ln_f.weight", ("final_norm", "scale")),
    _same("transformer.ln_f.bias", ("final_norm", "bias")),
  ]
  if not cfg.tie_embeddings:
    out.append(_same("lm_head.weight", ("lm_head", "kernel"), lambda w: w.T, lambda k: k.T))
  for i in range(cfg.num_layers):
    p, L = f"transformer.h.{i}.", f"layers_{i}"
    qkv = lambda name: tuple((L, "attn", n, name) for n in ("query", "key", "value"))  # noqa: E731
    out += [
      _same(p + "ln_1.weight", (L, "attn_norm", "scale")),
      _same(p + "ln_1.bias", (L, "attn_norm", "bias")),
      Entry(
        p + "attn.c_attn.weight",
        qkv("kernel"),
        lambda w: tuple(
          x.reshape(d, h, hd) for x in np.split(w, 3, axis=1)
        ),  # [d, 3hd] -> 3x[d, h, hd]
        lambda ks: np.concatenate([k.reshape(d, h * hd) for k in ks], axis=1),
      ),
      Entry(
        p + "attn.c_attn.bias",
        qkv("bias"),
        lambda b: tuple(x.reshape(h, hd) for x in np.split(b, 3)),  # [3hd] -> 3x[h, hd]
        lambda bs: np.concatenate([b.reshape(h * hd) for b in bs]),
      ),
      _same(
        p + "attn.c_proj.weight",
        (L, "attn", "out", "kernel"),
        lambda w: w.reshape(h, hd, d),
        lambda k: k.reshape(h * hd, d),
      ),  # [h*hd, d] <-> [h, hd, d]
      _same(p + "attn.c_proj.bias", (L, "attn", "out", "bias")),
      _same(p + "ln_2.weight", (L, "mlp_norm", "scale")),
      _same(p + "ln_2.bias", (L, "mlp_norm", "bias")),
      _same(p + "mlp.c_fc.weight", (L, "mlp", "wi", "kernel")),
      _same(p + "mlp.c_fc.bias", (L, "mlp", "wi", "bias")),
      _same(p + "mlp.c_proj.weight", (L, "mlp", "wo", "kernel")),
      _same(p + "mlp.c_proj.bias", (L, "mlp", "wo", "bias")),
    ]
  return out


GPT2 = Converter(
  "GPT2LMHeadModel",
  _gpt2_config_from_hf,
  _gpt2_config_to_hf,
  _gpt2_entries,
  _gpt2_why_not,
  ignored=r"(^|\.)attn\.(bias|masked_bias)$",
)


# ----------------------------------------------------------------------- Llama
def _llama_config_from_hf(c: dict) -> dict:
  if c.get("hidden_act", "silu") != "silu":
    raise ValueError(
      f"hidden_act={c['hidden_act']!r} is not supported (llmrl Llama uses silu / SwiGLU)"
    )
  if c.get("attention_bias") or c.get("mlp_bias"):
    raise ValueError("attention_bias / mlp_bias = true is not supported for llama")
  rope = c.get("rope_scaling") or c.get("rope_parameters") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"rope type {rope_type!r} is not supported; supported: 'default'")
  if rope.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError("partial_rotary_factor != 1 is not supported")
  heads = c["num_attention_heads"]
  return dict(
    vocab_size=c["vocab_size"],
    max_len=c.get("max_position_embeddings", 2048),
    num_layers=c["num_hidden_layers"],
    d_model=c["hidden_size"],
    num_heads=heads,
    num_kv_heads=c.get("num_key_value_heads") or heads,
    head_dim=c.get("head_dim") or c["hidden_size"] // heads,
    d_ff=c["intermediate_size"],
    style="llama",
    rope_base=float(c.get("rope_theta") or rope.get("rope_theta") or 10000.0),
    norm_eps=c.get("rms_norm_eps", 1e-6),
    tie_embeddings=c.get("tie_word_embeddings", False),
  )


def _llama_config_to_hf(cfg: GPTConfig) -> dict:
  return dict(
    vocab_size=cfg.vocab_size,
    max_position_embeddings=cfg.max_len,
    num_hidden_layers=cfg.num_layers,
    hidden_size=cfg.d_model,
    num_attention_heads=cfg.num_heads,
    num_key_value_heads=cfg.kv_heads,
    head_dim=cfg.d_head,
    intermediate_size=cfg.d_ff,
    hidden_act="silu",
    rms_norm_eps=cfg.norm_eps,
    rope_theta=cfg.rope_base,
    rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
    tie_word_embeddings=cfg.tie_embeddings,
    attention_bias=False,
    mlp_bias=False,
    attention_dropout=0.0,
    bos_token_id=None,
    eos_token_id=None,
  )


def _llama_why_not(cfg: GPTConfig) -> Optional[str]:
  if (cfg.position_type, cfg.norm_type, cfg.mlp_type, cfg.has_bias) != (
    "rope",
    "rmsnorm",
    "swiglu",
    False,
  ):
    return "Llama needs RoPE, RMSNorm, SwiGLU and no biases"
  if cfg.moe is not None:
    return "Llama has no mixture-of-experts layers"
  return None


def _llama_entries(cfg: GPTConfig) -> list:
  d, h, kvh, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.d_head
  out = [
    _same("model.embed_tokens.weight", ("embed", "embedding")),
    _same("model.norm.weight", ("final_norm", "scale")),
  ]
  if not cfg.tie_embeddings:
    out.append(_linear("lm_head.weight", ("lm_head", "kernel"), (d,), (cfg.vocab_size,)))
  for i in range(cfg.num_layers):
    p, L = f"model.layers.{i}.", f"layers_{i}"
    out += [
      _same(p + "input_layernorm.weight", (L, "attn_norm", "scale")),
      _linear(p + "self_attn.q_proj.weight", (L, "attn", "query", "kernel"), (d,), (h, hd)),
      _linear(p + "self_attn.k_proj.weight", (L, "attn", "key", "kernel"), (d,), (kvh, hd)),
      _linear(p + "self_attn.v_proj.weight", (L, "attn", "value", "kernel"), (d,), (kvh, hd)),
      _linear(p + "self_attn.o_proj.weight", (L, "attn", "out", "kernel"), (h, hd), (d,)),
      _same(p + "post_attention_layernorm.weight", (L, "mlp_norm", "scale")),
      _linear(p + "mlp.gate_proj.weight", (L, "mlp", "wi_gate", "kernel"), (d,), (cfg.d_ff,)),
      _linear(p + "mlp.up_proj.weight", (L, "mlp", "wi_up", "kernel"), (d,), (cfg.d_ff,)),
      _linear(p + "mlp.down_proj.weight", (L, "mlp", "wo", "kernel"), (cfg.d_ff,), (d,)),
    ]
  return out


LLAMA = Converter(
  "LlamaForCausalLM",
  _llama_config_from_hf,
  _llama_config_to_hf,
  _llama_entries,
  _llama_why_not,
  ignored=r"rotary_emb\.inv_freq$",
)


# --------------------------------------------------------------------- Mixtral
# Mixtral = Llama attention + a sparse MoE block in every layer: router
# `gate` [E, d] (no bias), experts w1 (gate) / w3 (up) [F, d] and w2 (down)
# [d, F] with SwiGLU; routing is softmax over all experts, top-k, renormalised
# (= llmrl router_order "topk_softmax"), dropless.
_MIXTRAL_EXPERT = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")
_MIXTRAL_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.(experts\.gate_up_proj|experts\.down_proj|gate\.weight)$")


def _mixtral_config_from_hf(c: dict) -> dict:
  kwargs = _llama_config_from_hf(c)
  window = c.get("sliding_window")
  if window is not None and window < kwargs["max_len"]:
    raise ValueError(f"sliding_window={window} < max_position_embeddings is not supported "
                     "(llmrl attention is full causal)")  # fmt: skip
  kwargs["moe"] = MoEConfig(
    num_experts=c["num_local_experts"],
    experts_per_token=c["num_experts_per_tok"],
    every=1,
    dropless=True,
    router_order="topk_softmax",
    router_jitter=c.get("router_jitter_noise") or 0.0,
    aux_loss_weight=c.get("router_aux_loss_coef", 0.001),
    z_loss_weight=0.0,
    dispatch="gather",  # dropless capacity = sequence length: gathers stay linear in it
  )
  return kwargs


def _mixtral_normalize(tensors: dict) -> dict:
  """Per-expert w1/w2/w3 (checkpoint layout) or transformers>=5 fused experts -> stacked keys.

  Result keys: model.layers.{i}.block_sparse_moe.{gate.weight, experts.w1 [E, F, d],
  experts.w3 [E, F, d], experts.w2 [E, d, F]}.
  """
  out, per_expert = {}, {}
  for key, value in tensors.items():
    m, f = _MIXTRAL_EXPERT.match(key), _MIXTRAL_FUSED.match(key)
    if m:
      per_expert.setdefault((int(m[1]), m[3]), {})[int(m[2])] = value
    elif f:
      p = f"model.layers.{f[1]}.block_sparse_moe."
      if f[2] == "gate.weight":
        out[p + "gate.weight"] = value
      elif f[2] == "experts.down_proj":
        out[p + "experts.w2"] = value
      else:  # gate_up_proj [E, 2F, d]: gate rows first, then up
        out[p + "experts.w1"], out[p + "experts.w3"] = np.split(value, 2, axis=1)
    else:
      out[key] = value
  for (layer, w), experts in per_expert.items():
    if sorted(experts) != list(range(len(experts))):
      raise ValueError(f"layer {layer} {w}: expert indices {sorted(experts)} are not 0..E-1")
    stacked = np.stack([experts[e] for e in range(len(experts))])
    out[f"model.layers.{layer}.block_sparse_moe.experts.{w}"] = stacked
  return out


def _mixtral_entries(cfg: GPTConfig) -> list:
  out = [e for e in _llama_entries(cfg.replace(moe=None)) if ".mlp." not in e.hf_key]
  swap = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731  [E, out, in] <-> [E, in, out]
  for i in range(cfg.num_layers):
    p, L = f"model.layers.{i}.block_sparse_moe.", f"layers_{i}"
    out += [
      _same(p + "gate.weight", (L, "moe", "router"), lambda w: w.T, lambda k: k.T),
      _same(p + "experts.w1", (L, "moe", "wi_gate"), swap, swap),
      _same(p + "experts.w3", (L, "moe", "wi_up"), swap, swap),
      _same(p + "experts.w2", (L, "moe", "wo"), swap, swap),
    ]
  return out


def _mixtral_why_not(cfg: GPTConfig) -> Optional[str]:
  return "saving Mixtral checkpoints is not implemented (llmrl.interop.hf.load reads them)"


MIXTRAL = Converter(
  "MixtralForCausalLM",
  _mixtral_config_from_hf,
  lambda cfg: {},
  _mixtral_entries,
  _mixtral_why_not,
  ignored=r"rotary_emb\.inv_freq$",
  normalize=_mixtral_normalize,
)


def normalize_keys(model_type: str, tensors: dict) -> dict:
  """Old GPT-2 checkpoints (e.g. the original hub `gpt2`) lack the `transformer.` prefix."""
  if model_type == "gpt2" and "wte.weight" in tensors and "transformer.wte.weight" not in tensors:
    return {k if k.startswith("lm_head.") else "transformer." + k: v for k, v in tensors.items()}
  return tensors


def is_ignored(converter: Converter, key: str) -> bool:
  return re.search(converter.ignored, key) is not None
