"""Converters from HF encoder (BERT) and encoder-decoder (T5) checkpoints to llmrl models.

Same `Converter` / `Entry` tables as the decoder-only families
(llmrl/interop/hf_decoders.py), plus what these families need:

* BERT (`model_type` "bert"): BertModel, BertForMaskedLM, BertForPreTraining,
  BertForNextSentencePrediction and BertForSequenceClassification. The heads
  llmrl builds follow the checkpoint's `architectures`; a BertModel saved
  without its pooler loads without one. Old key spellings (no `bert.`
  prefix in BertModel files, LayerNorm gamma/beta) are normalised.
* T5 (`model_type` "t5"): T5ForConditionalGeneration with feed_forward_proj
  "relu" (v1.0), "gated-gelu" (v1.1), "gelu", "gated-silu". The LM head is
  untied iff the file holds an `lm_head.weight` that differs from
  `shared.weight` (what transformers does too); logits are scaled by
  d_model**-0.5 iff `scale_decoder_outputs` (transformers >= 5) or, in older
  config files, `tie_word_embeddings` is not false.

Layouts: HF `nn.Linear` weights are [out, in]; llmrl kernels are [in, out]
with heads split out (q/k/v [embed, heads, head_dim], out [heads, head_dim, embed]).
Export (hf.save) writes the architecture that has exactly the configured
heads, and for T5 both `tie_word_embeddings` and `scale_decoder_outputs`, so
transformers >= 5 and older readers agree.
"""

from typing import Optional

import numpy as np

from llmrl.interop.hf_decoders import Converter, _linear, _same
from llmrl.models.bert import Bert, BertConfig
from llmrl.models.bert import param_shapes as bert_param_shapes
from llmrl.models.t5 import T5, T5Config
from llmrl.models.t5 import param_shapes as t5_param_shapes

# ------------------------------------------------------------------------ BERT
# architecture -> (mlm_head, nsp_head, pooler, classifier)
BERT_ARCHITECTURES = {
  "BertModel": (False, False, True, False),
  "BertForMaskedLM": (True, False, False, False),
  "BertForPreTraining": (True, True, True, False),
  "BertForNextSentencePrediction": (False, True, True, False),
  "BertForSequenceClassification": (False, False, True, True),
}
_BERT_ACTIVATIONS = {
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "relu": "relu",
}


def _bert_architecture(c: dict) -> str:
  arch = (c.get("architectures") or ["BertModel"])[0]
  if arch not in BERT_ARCHITECTURES:
    raise ValueError(
      f"architecture {arch} is not supported; supported BERT architectures: "
      f"{', '.join(sorted(BERT_ARCHITECTURES))}"
    )
  return arch


def _bert_config_from_hf(c: dict) -> dict:
  arch = _bert_architecture(c)
  act = c.get("hidden_act", "gelu")
  if act not in _BERT_ACTIVATIONS:
    raise ValueError(f"hidden_act={act!r} is not supported; supported: {sorted(_BERT_ACTIVATIONS)}")
  for flag, ok in (
    ("position_embedding_type", "absolute"),
    ("is_decoder", False),
    ("add_cross_attention", False),
    ("tie_word_embeddings", True),
  ):
    if c.get(flag, ok) != ok:
      raise ValueError(f"{flag}={c[flag]!r} is not supported (llmrl BERT needs {ok!r})")
  mlm, nsp, pooler, classifier = BERT_ARCHITECTURES[arch]
  num_labels = len(c.get("id2label") or {}) or c.get("num_labels") or 2
  return dict(
    vocab_size=c["vocab_size"],
    max_len=c.get("max_position_embeddings", 512),
    type_vocab_size=c.get("type_vocab_size", 2),
    num_layers=c["num_hidden_layers"],
    d_model=c["hidden_size"],
    num_heads=c["num_attention_heads"],
    d_ff=c["intermediate_size"],
    activation=_BERT_ACTIVATIONS[act],
    norm_eps=c.get("layer_norm_eps", 1e-12),
    mlm_head=mlm,
    nsp_head=nsp,
    pooler=pooler,
    num_labels=num_labels if classifier else 0,
  )


def _bert_normalize(tensors: dict) -> dict:
  """BertModel files lack the `bert.` prefix; TF-era files call LayerNorm params gamma/beta."""
  bare = "embeddings.word_embeddings.weight" in tensors
  out = {}
  for k, v in tensors.items():
    if bare and not k.startswith(("cls.", "classifier.", "bert.")):
      k = "bert." + k
    k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    out[k] = v
  return out


def _bert_refine(kwargs: dict, tensors: dict) -> dict:
  """A BertModel saved with add_pooling_layer=False has no pooler."""
  if not (kwargs["nsp_head"] or kwargs["num_labels"] or kwargs["mlm_head"]):
    kwargs = dict(kwargs, pooler="bert.pooler.dense.weight" in tensors)
  return kwargs


def _dense(hf: str, path, in_shape, out_shape) -> list:
  """nn.Linear weight + bias -> kernel [*in, *out] + bias [*out]."""
  return [
    _linear(hf + ".weight", path + ("kernel",), in_shape, out_shape),
    _same(
      hf + ".bias",
      path + ("bias",),
      lambda b: b.reshape(out_shape),
      lambda b: b.reshape(-1),
    ),
  ]


def _norm(hf: str, path) -> list:
  return [_same(hf + ".weight", path + ("scale",)), _same(hf + ".bias", path + ("bias",))]


def _bert_entries(cfg: BertConfig) -> list:
  d, h, hd, ff = cfg.d_model, cfg.num_heads, cfg.d_head, cfg.d_ff
  e = "bert.embeddings."
  out = [
    _same(e + "word_embeddings.weight", ("embed", "embedding")),
    _same(e + "position_embeddings.weight", ("pos_embed", "embedding")),
    _same(e + "token_type_embeddings.weight", ("type_embed", "embedding")),
    *_norm(e + "LayerNorm", ("embed_norm",)),
  ]
  for i in range(cfg.num_layers):
    p, L = f"bert.encoder.layer.{i}.", f"layers_{i}"
    for name in ("query", "key", "value"):
      out += _dense(p + f"attention.self.{name}", (L, "attn", name), (d,), (h, hd))
    out += _dense(p + "attention.output.dense", (L, "attn", "out"), (h, hd), (d,))
    out += _norm(p + "attention.output.LayerNorm", (L, "attn_norm"))
    out += _dense(p + "intermediate.dense", (L, "mlp", "wi"), (d,), (ff,))
    out += _dense(p + "output.dense", (L, "mlp", "wo"), (ff,), (d,))
    out += _norm(p + "output.LayerNorm", (L, "mlp_norm"))
  if cfg.pooler:
    out += _dense("bert.pooler.dense", ("pooler",), (d,), (d,))
  if cfg.mlm_head:
    out += _dense("cls.predictions.transform.dense", ("mlm", "transform"), (d,), (d,))
    out += _norm("cls.predictions.transform.LayerNorm", ("mlm", "norm"))
    out.append(_same("cls.predictions.bias", ("mlm", "bias")))
  if cfg.nsp_head:
    out += _dense("cls.seq_relationship", ("nsp",), (d,), (2,))
  if cfg.num_labels:
    out += _dense("classifier", ("classifier",), (d,), (cfg.num_labels,))
  return out


def _bert_heads(cfg: BertConfig) -> tuple:
  return (cfg.mlm_head, cfg.nsp_head, cfg.pooler, cfg.num_labels > 0)


def _bert_why_not(cfg: BertConfig) -> Optional[str]:
  if _bert_heads(cfg) not in BERT_ARCHITECTURES.values():
    return (
      "no transformers BERT class has these heads (mlm_head, nsp_head, pooler, classifier) = "
      f"{_bert_heads(cfg)}"
    )
  return None


def _bert_config_to_hf(cfg: BertConfig) -> dict:
  arch = next(a for a, heads in BERT_ARCHITECTURES.items() if heads == _bert_heads(cfg))
  act = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu"}[cfg.activation]
  out = dict(
    architectures=[arch],
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    num_hidden_layers=cfg.num_layers,
    num_attention_heads=cfg.num_heads,
    intermediate_size=cfg.d_ff,
    hidden_act=act,
    max_position_embeddings=cfg.max_len,
    type_vocab_size=cfg.type_vocab_size,
    layer_norm_eps=cfg.norm_eps,
    hidden_dropout_prob=cfg.dropout_rate,
    attention_probs_dropout_prob=0.0,
    initializer_range=cfg.init_std,
    position_embedding_type="absolute",
    tie_word_embeddings=True,
    pad_token_id=0,
  )
  if cfg.num_labels:
    out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
  return out


BERT = Converter(
  "BertForPreTraining",
  _bert_config_from_hf,
  _bert_config_to_hf,
  _bert_entries,
  _bert_why_not,
  ignored=r"(position_ids|token_type_ids)$|^cls\.predictions\.decoder\.(weight|bias)$",
  model=Bert,
  make_config=BertConfig,
  param_shapes=bert_param_shapes,
  normalize=_bert_normalize,
  refine=_bert_refine,
)


# -------------------------------------------------------------------------- T5
_T5_MLPS = {
  "relu": "relu",
  "gated-gelu": "geglu",  # HF maps gated-gelu to gelu_new (tanh), as llmrl's geglu
  "gated-gelu_new": "geglu",
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gated-silu": "swiglu",
}
_T5_MLP_NAMES = {"relu": "relu", "geglu": "gated-gelu", "gelu_exact": "gelu", "gelu": "gelu_new",
                 "swiglu": "gated-silu"}  # fmt: skip


def _t5_config_from_hf(c: dict) -> dict:
  arch = (c.get("architectures") or ["T5ForConditionalGeneration"])[0]
  if arch != "T5ForConditionalGeneration":
    raise ValueError(
      f"architecture {arch} is not supported; supported T5 architectures: "
      "T5ForConditionalGeneration"
    )
  ffp = c.get("feed_forward_proj", "relu")
  if ffp not in _T5_MLPS:
    raise ValueError(f"feed_forward_proj={ffp!r} is not supported; supported: {sorted(_T5_MLPS)}")
  scale = c.get("scale_decoder_outputs")
  if scale is None:  # config files from transformers < 5
    scale = c.get("tie_word_embeddings", True) is not False
  return dict(
    vocab_size=c["vocab_size"],
    num_layers=c["num_layers"],
    num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"],
    d_model=c["d_model"],
    num_heads=c["num_heads"],
    head_dim=c["d_kv"],
    d_ff=c["d_ff"],
    style="v1_1" if ffp.startswith("gated") else "v1_0",
    mlp=_T5_MLPS[ffp],
    tie_embeddings=True,  # refined from the tensors below
    scale_logits=bool(scale),
    relative_buckets=c.get("relative_attention_num_buckets", 32),
    relative_max_distance=c.get("relative_attention_max_distance", 128),
    norm_eps=c.get("layer_norm_epsilon", 1e-6),
    max_len=c.get("n_positions") or 512,
  )


def _t5_normalize(tensors: dict) -> dict:
  """Drops an lm_head.weight that merely repeats shared.weight (tied checkpoints)."""
  tensors = dict(tensors)
  if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
    tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
  head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
  if head is not None and shared is not None and np.array_equal(head, shared):
    del tensors["lm_head.weight"]
  return tensors


def _t5_refine(kwargs: dict, tensors: dict) -> dict:
  return dict(kwargs, tie_embeddings="lm_head.weight" not in tensors)


def _t5_attention(hf: str, path, cfg: T5Config) -> list:
  d, h, hd = cfg.d_model, cfg.num_heads, cfg.d_head
  out = [
    _linear(f"{hf}.{a}.weight", path + (b, "kernel"), (d,), (h, hd))
    for a, b in (("q", "query"), ("k", "key"), ("v", "value"))
  ]
  return out + [_linear(f"{hf}.o.weight", path + ("out", "kernel"), (h, hd), (d,))]


def _t5_entries(cfg: T5Config) -> list:
  d, ff = cfg.d_model, cfg.d_ff
  out = [_same("shared.weight", ("shared", "embedding"))]
  if not cfg.tied:
    out.append(_linear("lm_head.weight", ("lm_head", "kernel"), (d,), (cfg.vocab_size,)))
  for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
    out += [
      _same(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (stack, "relpos", "embedding"),
      ),
      _same(f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale")),
    ]
    for i in range(n):
      p, L = f"{stack}.block.{i}.layer.", (stack, f"layers_{i}")
      out.append(_same(p + "0.layer_norm.weight", L + ("attn_norm", "scale")))
      out += _t5_attention(p + "0.SelfAttention", L + ("attn",), cfg)
      f = 1
      if stack == "decoder":
        out.append(_same(p + "1.layer_norm.weight", L + ("cross_norm", "scale")))
        out += _t5_attention(p + "1.EncDecAttention", L + ("cross_attn",), cfg)
        f = 2
      ffn, mlp = f"{p}{f}.DenseReluDense.", L + ("mlp",)
      out.append(_same(f"{p}{f}.layer_norm.weight", L + ("mlp_norm", "scale")))
      if cfg.mlp_type in ("geglu", "swiglu"):
        out.append(_linear(ffn + "wi_0.weight", mlp + ("wi_gate", "kernel"), (d,), (ff,)))
        out.append(_linear(ffn + "wi_1.weight", mlp + ("wi_up", "kernel"), (d,), (ff,)))
      else:
        out.append(_linear(ffn + "wi.weight", mlp + ("wi", "kernel"), (d,), (ff,)))
      out.append(_linear(ffn + "wo.weight", mlp + ("wo", "kernel"), (ff,), (d,)))
  return out


def _t5_why_not(cfg: T5Config) -> Optional[str]:
  if cfg.mlp_type not in _T5_MLP_NAMES:
    return f"transformers T5 has no {cfg.mlp_type} MLP"
  if not cfg.tied and cfg.logit_scale:
    return "an untied lm_head with scaled logits has no transformers T5 config"
  return None


def _t5_config_to_hf(cfg: T5Config) -> dict:
  return dict(
    vocab_size=cfg.vocab_size,
    d_model=cfg.d_model,
    d_kv=cfg.d_head,
    d_ff=cfg.d_ff,
    num_layers=cfg.num_layers,
    num_decoder_layers=cfg.decoder_layers,
    num_heads=cfg.num_heads,
    relative_attention_num_buckets=cfg.relative_buckets,
    relative_attention_max_distance=cfg.relative_max_distance,
    dropout_rate=cfg.dropout_rate,
    layer_norm_epsilon=cfg.norm_eps,
    feed_forward_proj=_T5_MLP_NAMES[cfg.mlp_type],
    tie_word_embeddings=cfg.tied,
    scale_decoder_outputs=cfg.logit_scale,
    is_encoder_decoder=True,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
  )


T5_CONVERTER = Converter(
  "T5ForConditionalGeneration",
  _t5_config_from_hf,
  _t5_config_to_hf,
  _t5_entries,
  _t5_why_not,
  ignored=(
    r"^(encoder|decoder)\.embed_tokens\.weight$"
    r"|^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"
  ),
  model=T5,
  make_config=T5Config,
  param_shapes=t5_param_shapes,
  normalize=_t5_normalize,
  refine=_t5_refine,
)
