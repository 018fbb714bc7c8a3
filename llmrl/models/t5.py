"""Encoder-decoder transformer (T5, Raffel et al. 2020; v1.0 and v1.1) as a pure linen module.

    cfg = T5Config(vocab_size=1024, num_layers=2, d_model=64, num_heads=4, d_ff=256,
                   style="v1_1")
    model = T5(cfg)
    params = nn.unbox(model.init({"params": key}, enc_ids, dec_ids))["params"]
    logits = model.apply({"params": params}, input_ids, decoder_input_ids,
                         segment_ids=attention_mask)            # [b, dec_len, vocab]

Variants (`style`, each part overridable):
  "v1_0": ReLU MLP, output logits through the shared embedding scaled by
          d_model**-0.5 (tied, `scale_logits`).
  "v1_1": gated-GELU MLP (GeGLU, tanh GELU as HF "gelu_new"), separate
          lm_head, no logit scaling.
Both: pre-norm blocks with RMSNorm without mean or bias (T5 LayerNorm), no
biases anywhere, attention scores not scaled by head_dim**-0.5 (the query
initialisation carries it), relative position bias (bucketed; bidirectional
in the encoder, causal in the decoder) with one table per stack shared by
its layers, decoder cross-attention over the encoder output.

Masks: `segment_ids` [b, enc_len] for the encoder and `decoder_segment_ids`
[b, dec_len] (optional) take HF attention masks as is (1 = token, 0 = pad;
several ids > 0 pack several examples into a row, cross-attention then stays
within an example).

Greedy / sampled decoding (what llmrl.decoding calls):

    encoded = model.apply({"params": p}, enc_ids, segment_ids=enc_mask, method=T5.encode)
    step_model = T5(cfg.replace(decode=True))
    cache = init_cache(cfg, batch_size)           # decoder self-attention KV cache
    tokens = jnp.full((b, 1), 0)                 # decoder start = pad id (0), as T5
    for _ in range(n):
      logits, vars = step_model.apply({"params": p, "cache": cache}, encoded, tokens,
                                      encoder_segment_ids=enc_mask, method=T5.decode,
                                      mutable=["cache"])
      cache = vars["cache"]; tokens = logits[:, -1].argmax(-1)[:, None]

Each `decode` call appends its chunk (one token, or a prompt chunk) to the
cache (length `cfg.max_len`, or whatever length the caller's cache has) and
returns logits [b, chunk, vocab] equal to the full forward pass at those
positions. Cross-attention keys/values are recomputed from `encoded` at each
call (2 * enc_len * d_model * inner_dim * 2 FLOPs per layer): simple, and
cheap next to the encoder for short outputs.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from llmrl.models.attention import Attention
from llmrl.models.gpt import _REMAT_POLICIES, REMAT
from llmrl.models.layers import MLP, MLPS, Dense, Embed, RelativePositionBias, RMSNorm
from llmrl.models.moe import MoE, MoEConfig

T5_STYLES = ("v1_0", "v1_1")
T5_ATTENTION_IMPLS = ("auto", "plain", "blockwise", "jax")  # all three take the relative bias
_STYLE_DEFAULTS = {"v1_0": ("relu", True, True), "v1_1": ("geglu", False, False)}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 encoder-decoder (frozen; use `.replace`)."""

  # Vocabulary size (shared by encoder input, decoder input and output).
  vocab_size: int = 256
  # Encoder blocks; decoder blocks (None = the same number).
  num_layers: int = 2
  num_decoder_layers: Optional[int] = None
  # Residual stream width.
  d_model: int = 64
  # Attention heads and per-head width (T5's d_kv; None = d_model // num_heads).
  num_heads: int = 4
  head_dim: Optional[int] = None
  # Hidden width of the MLP (per branch when gated).
  d_ff: int = 256
  # "v1_0" (ReLU, tied + scaled logits) | "v1_1" (gated-GELU, untied lm_head).
  style: str = "v1_0"
  # Overrides of the style's parts (None = the style's choice).
  mlp: Optional[str] = None  # "relu" | "geglu" | "gelu_exact" | "gelu" | "swiglu"
  tie_embeddings: Optional[bool] = None  # logits through the shared embedding
  scale_logits: Optional[bool] = None  # multiply the decoder output by d_model**-0.5
  # Relative position buckets and the distance where the last bucket starts.
  relative_buckets: int = 32
  relative_max_distance: int = 128
  # RMSNorm epsilon.
  norm_eps: float = 1e-6
  # Dropout on embeddings, residual branches and the final stack outputs.
  dropout_rate: float = 0.0
  # Decoder KV-cache length (T5 has no position table, so no other length limit).
  max_len: int = 128
  # "plain" | "blockwise" (flash-style, the relative bias cut per key block) | "jax".
  attention_impl: str = "plain"
  # Key block size of the blockwise kernel.
  attention_block_size: int = 128
  # Multiplier of T5's initialisation: embeddings N(0, f), q N(0, f (d_model d_kv)^-0.5),
  # k/v/wi and an untied lm_head N(0, f d_model^-0.5), out N(0, f inner^-0.5), wo N(0, f d_ff^-0.5).
  init_factor: float = 1.0
  # Compute and parameter dtypes (strings like "bfloat16" are accepted).
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  # Rematerialisation of each block: "none" | "full" | "dots".
  remat: str = "none"
  # Incremental decoding with a decoder KV cache (the "cache" collection).
  decode: bool = False
  # Mixture-of-experts feed-forward blocks in both stacks (None = dense; llmrl.models.moe).
  moe: Optional[MoEConfig] = None

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
    self._validate()

  def _validate(self):
    def bad(msg):
      raise ValueError(f"T5Config: {msg}")

    for field, value, allowed in (
      ("style", self.style, T5_STYLES),
      ("mlp", self.mlp_type if self.style in T5_STYLES else "relu", MLPS),
      ("attention_impl", self.attention_impl, T5_ATTENTION_IMPLS),
      ("remat", self.remat, REMAT),
    ):
      if value not in allowed:
        bad(f"{field}={value!r} is not one of {allowed}")
    for field in ("vocab_size", "num_layers", "d_model", "num_heads", "d_ff", "max_len",
                  "attention_block_size"):
      if getattr(self, field) <= 0:
        bad(f"{field}={getattr(self, field)} must be positive")
    if self.decoder_layers <= 0:
      bad(f"num_decoder_layers={self.num_decoder_layers} must be positive")
    if self.head_dim is None and self.d_model % self.num_heads:
      bad(f"num_heads={self.num_heads} does not divide d_model={self.d_model}; set head_dim")
    if self.relative_buckets < 4 or self.relative_max_distance < self.relative_buckets // 2:
      bad("relative_buckets must be >= 4 and relative_max_distance >= relative_buckets / 2")
    if self.moe is not None and self.moe.every > min(self.num_layers, self.decoder_layers):
      bad(f"moe.every={self.moe.every} exceeds a stack's layers: that stack would have no MoE")

  def replace(self, **changes) -> "T5Config":
    """A copy with some fields changed (e.g. `cfg.replace(decode=True)`)."""
    return dataclasses.replace(self, **changes)

  @property
  def decoder_layers(self) -> int:
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  @property
  def d_head(self) -> int:
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def d_attn(self) -> int:
    """Width of the concatenated heads (T5's inner_dim)."""
    return self.num_heads * self.d_head

  @property
  def mlp_type(self) -> str:
    return self.mlp or _STYLE_DEFAULTS[self.style][0]

  @property
  def tied(self) -> bool:
    return _STYLE_DEFAULTS[self.style][1] if self.tie_embeddings is None else self.tie_embeddings

  @property
  def logit_scale(self) -> bool:
    return _STYLE_DEFAULTS[self.style][2] if self.scale_logits is None else self.scale_logits


class T5Block(nn.Module):
  """Pre-norm block: self-attention, (decoder) cross-attention, MLP; each x + f(RMSNorm(x))."""

  config: T5Config
  decoder: bool = False
  use_moe: bool = False  # routed experts (config.moe) in place of the MLP

  @nn.compact
  def __call__(self, x, segment_ids, bias, encoded, encoder_segment_ids, deterministic: bool):
    """x [batch, length, embed] -> [batch, length, embed]; bias [1, heads, length, lk]."""
    cfg = self.config
    f = cfg.init_factor
    drop = nn.Dropout(cfg.dropout_rate)

    def norm(name):
      return RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)

    def attention(name, causal, decode):
      return Attention(
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_heads,
        head_dim=cfg.d_head,
        max_len=cfg.max_len,
        causal=causal,
        impl=cfg.attention_impl,
        block_size=cfg.attention_block_size,
        decode=decode,
        init_std=f * cfg.d_model**-0.5,
        query_init_std=f * (cfg.d_model * cfg.d_head) ** -0.5,
        out_init_std=f * cfg.d_attn**-0.5,
        scale=1.0,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name=name,
      )

    self_attn = attention("attn", causal=self.decoder, decode=cfg.decode and self.decoder)
    h = self_attn(norm("attn_norm")(x), None, segment_ids, bias=bias)
    x = x + drop(h, deterministic=deterministic)
    if self.decoder:
      h = attention("cross_attn", causal=False, decode=False)(
        norm("cross_norm")(x), None, segment_ids, kv=encoded, kv_segment_ids=encoder_segment_ids
      )
      x = x + drop(h, deterministic=deterministic)
    d_ff = (cfg.moe.d_ff or cfg.d_ff) if self.use_moe else cfg.d_ff
    ffn = dict(
      d_ff=d_ff,
      kind=cfg.mlp_type,
      use_bias=False,
      init_std=f * cfg.d_model**-0.5,
      out_init_std=f * d_ff**-0.5,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
    )
    if self.use_moe:
      mask = None if segment_ids is None else segment_ids != 0
      h = MoE(cfg.moe, name="moe", **ffn)(norm("mlp_norm")(x), mask, deterministic)
    else:
      h = MLP(name="mlp", **ffn)(norm("mlp_norm")(x))
    x = x + drop(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class T5Stack(nn.Module):
  """The encoder or the decoder: relative position bias (computed once), blocks, final norm."""

  config: T5Config
  decoder: bool = False

  @nn.compact
  def __call__(
    self, x, segment_ids=None, encoded=None, encoder_segment_ids=None, deterministic=True
  ):
    """x [batch, length, embed] (embedded tokens) -> [batch, length, embed]."""
    cfg = self.config
    length = x.shape[1]
    q_index = k_index = jnp.arange(length)  # [l]
    if self.decoder and cfg.decode:
      # Queries sit at the running index; keys are the whole cache (see Attention).
      initialized = self.has_variable("cache", "index")
      index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
      if initialized:
        cache_len = self.variables["cache"]["layers_0"]["attn"]["cached_segment"].shape[1]
        q_index = index.value + jnp.arange(length)  # [l]
        k_index = jnp.arange(cache_len)  # [cache_len]
        index.value = index.value + length
    bias = RelativePositionBias(
      num_heads=cfg.num_heads,
      num_buckets=cfg.relative_buckets,
      max_distance=cfg.relative_max_distance,
      bidirectional=not self.decoder,
      init_std=cfg.init_factor * cfg.d_model**-0.5,
      dtype=jnp.float32,
      param_dtype=cfg.param_dtype,
      name="relpos",
    )(q_index, k_index)  # [1, heads, l, lk]
    block = T5Block
    if cfg.remat != "none":
      block = nn.remat(
        T5Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=True, static_argnums=(6,)
      )
    num = cfg.decoder_layers if self.decoder else cfg.num_layers
    drop = nn.Dropout(cfg.dropout_rate)
    x = drop(x, deterministic=deterministic)
    for i in range(num):
      use_moe = cfg.moe is not None and cfg.moe.is_moe_layer(i)
      x = block(cfg, self.decoder, use_moe, name=f"layers_{i}")(
        x, segment_ids, bias, encoded, encoder_segment_ids, deterministic
      )
    x = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    return drop(x, deterministic=deterministic)


class T5(nn.Module):
  """T5 encoder-decoder with an LM head.

  Parameter tree: shared/embedding; encoder/{relpos/embedding,
  layers_{i}/{attn_norm, attn/{query,key,value,out}, mlp_norm, mlp/{wi | wi_gate, wi_up}, wo},
  final_norm}; decoder/{relpos, layers_{i}/{attn_norm, attn, cross_norm, cross_attn,
  mlp_norm, mlp}, final_norm}; lm_head/kernel (untied only). MoE blocks (config.moe)
  hold moe/{router, wi | wi_gate, wi_up, wo} instead of mlp.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    f = cfg.init_factor
    self.shared = Embed(cfg.vocab_size, cfg.d_model, f * 1.0, cfg.dtype, cfg.param_dtype)
    self.encoder = T5Stack(cfg, decoder=False)
    self.decoder = T5Stack(cfg, decoder=True)
    if not cfg.tied:
      self.lm_head = Dense(  # d_model**-0.5 keeps initial logits O(1) (HF uses 1.0)
        cfg.vocab_size,
        ("embed", "vocab"),
        init_std=f * cfg.d_model**-0.5,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
      )

  def __call__(
    self,
    input_ids,
    decoder_input_ids,
    segment_ids=None,
    decoder_segment_ids=None,
    deterministic: bool = True,
  ):
    """input_ids [b, enc_len], decoder_input_ids [b, dec_len] -> logits [b, dec_len, vocab]."""
    encoded = self.encode(input_ids, segment_ids, deterministic)
    return self.decode(encoded, decoder_input_ids, segment_ids, decoder_segment_ids, deterministic)

  def encode(self, input_ids, segment_ids=None, deterministic: bool = True):
    """Encoder output [batch, enc_len, embed] (after the final norm)."""
    x = self.shared(input_ids)  # [b, l, embed]
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    return self.encoder(x, segment_ids, deterministic=deterministic)

  def decode(
    self,
    encoded,
    decoder_input_ids,
    encoder_segment_ids=None,
    decoder_segment_ids=None,
    deterministic: bool = True,
  ):
    """Logits [b, dec_len, vocab] of the decoder over `encoded` [b, enc_len, embed].

    In decode mode (cfg.decode) the chunk is appended to the KV cache; call
    with mutable=["cache"] (see the module docstring).
    """
    y = self.shared(decoder_input_ids)  # [b, l, embed]
    y = nn.with_logical_constraint(y, ("act_batch", "act_length", "act_embed"))
    hidden = self.decoder(y, decoder_segment_ids, encoded, encoder_segment_ids, deterministic)
    return self.logits(hidden)

  def logits(self, hidden):
    """Decoder hidden [batch, length, embed] -> logits [batch, length, vocab]."""
    cfg = self.config
    if cfg.logit_scale:
      hidden = hidden * jnp.asarray(cfg.d_model**-0.5, hidden.dtype)
    logits = self.shared.attend(hidden) if cfg.tied else self.lm_head(hidden)
    return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))


def init_params(cfg: T5Config, rng, enc_len: int = 8, dec_len: int = 4):
  """Boxed (logically partitioned) params of T5(cfg)."""
  enc = jnp.zeros((1, enc_len), jnp.int32)
  dec = jnp.zeros((1, dec_len), jnp.int32)
  return T5(cfg.replace(decode=False)).init({"params": rng}, enc, dec)["params"]


def param_shapes(cfg: T5Config):
  """Unboxed ShapeDtypeStructs of T5(cfg)'s params (nothing materialised)."""
  return nn.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))


def init_cache(cfg: T5Config, batch_size: int, cache_len: Optional[int] = None):
  """A zeroed decoder cache for `T5(cfg.replace(decode=True))` with `batch_size` rows.

  cache_len defaults to cfg.max_len. Shapes come from `jax.eval_shape`.
  """
  model = T5(cfg.replace(decode=True, max_len=cache_len or cfg.max_len))
  encoded = jnp.zeros((batch_size, 1, cfg.d_model), cfg.dtype)
  ids = jnp.zeros((batch_size, 1), jnp.int32)
  shapes = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0)}, encoded, ids, method=T5.decode)
  )["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
