"""Mixture-of-experts feed-forward layer: a drop-in for the MLP of GPT, BERT and T5 blocks.

    moe = MoEConfig(num_experts=8, experts_per_token=2, every=2)
    cfg = GPTConfig(..., moe=moe)            # layers 1, 3, ... use MoE(...) instead of MLP
    logits, v = GPT(cfg).apply({"params": p}, ids, deterministic=False,
                               rngs={"dropout": k}, mutable=["moe"])
    penalty, metrics = summarize(v["moe"], moe)  # aux + z losses, utilisation metrics

Routing (fp32): router logits = x W_r [tokens, experts]; `router_order`
"softmax_topk" takes softmax over all experts then the top-k probabilities as
gates (Switch k=1, ST-MoE); "topk_softmax" takes the top-k logits and a
softmax over just those (GShard/Mixtral normalised gates; equal to softmax,
top-k, renormalise). Training applies multiplicative router jitter
x * U(1 - eps, 1 + eps) to the router input (Switch).

Capacity (GShard/Switch): a group is one sequence of s tokens; each expert
takes at most C = ceil(k * capacity_factor * s / E) tokens of its group
(capacity_factor_eval when deterministic; C <= s). Slots are filled first by
every token's first choice, then second choices, each in token order. An
assignment beyond C is dropped: it adds nothing, so a token whose choices are
all dropped passes through the block's residual unchanged. `dropless` sets
C = s (nothing can be dropped). Padding tokens (token_mask 0) are not routed.

Dispatch: "einsum" builds one-hot dispatch/combine tensors [g, s, E, C] and
contracts them (GShard/Mesh-TF style; with the expert kernels sharded on the
`expert` mesh axis XLA's partitioner runs each expert on its own devices and
sums the combine over that axis); "gather" moves tokens with index gathers
(same result, no O(s * E * C * d) contractions: faster on CPU).

Auxiliary terms per MoE layer (sown into the "moe" collection, see
`summarize`): the Switch load-balancing loss E * sum_i f_i * P_i with f_i the
fraction of the (token, choice) assignments routed to expert i before capacity
(sums to 1 over experts, so a perfectly balanced router gives 1 for any k) and
P_i the mean router probability of expert i; the router z-loss
mean(logsumexp(logits)^2) (ST-MoE); f (the per-expert token fractions) and the
fraction of assignments dropped by capacity.
"""

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from llmrl.models.layers import _ACTIVATIONS, MLPS

ROUTER_ORDERS = ("softmax_topk", "topk_softmax")
DISPATCHES = ("einsum", "gather")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """Mixture-of-experts settings shared by GPTConfig, BertConfig and T5Config (`moe=`)."""

  # Experts per MoE layer.
  num_experts: int = 8
  # Experts each token is sent to (1 = Switch, 2 = GShard / Mixtral).
  experts_per_token: int = 2
  # Every `every`-th block is MoE: blocks every-1, 2*every-1, ... (1 = all blocks).
  every: int = 2
  # Hidden width of each expert (None = the model's d_ff).
  d_ff: Optional[int] = None
  # Capacity per expert as a multiple of the even share k * s / E (train / eval).
  capacity_factor: float = 1.25
  capacity_factor_eval: float = 2.0
  # No capacity limit (C = group size): no token is ever dropped.
  dropless: bool = False
  # "softmax_topk" | "topk_softmax" (see the module docstring).
  router_order: str = "softmax_topk"
  # Multiplicative jitter on the router input in training (0 = off).
  router_jitter: float = 0.0
  # Weights of the load-balancing and router z-loss terms added to the training loss.
  aux_loss_weight: float = 0.01
  z_loss_weight: float = 0.001
  # "einsum" (one-hot dispatch/combine) | "gather" (index gathers).
  dispatch: str = "einsum"

  def __post_init__(self):
    def bad(msg):
      raise ValueError(f"MoEConfig: {msg}")

    if self.num_experts < 1:
      bad(f"num_experts={self.num_experts} must be >= 1")
    if not 1 <= self.experts_per_token <= self.num_experts:
      bad(f"experts_per_token={self.experts_per_token} must be in [1, num_experts="
          f"{self.num_experts}]")  # fmt: skip
    if self.every < 1:
      bad(f"every={self.every} must be >= 1")
    if self.d_ff is not None and self.d_ff <= 0:
      bad(f"d_ff={self.d_ff} must be positive (or None)")
    if self.capacity_factor <= 0 or self.capacity_factor_eval <= 0:
      bad("capacity_factor and capacity_factor_eval must be positive")
    if self.router_order not in ROUTER_ORDERS:
      bad(f"router_order={self.router_order!r} is not one of {ROUTER_ORDERS}")
    if self.dispatch not in DISPATCHES:
      bad(f"dispatch={self.dispatch!r} is not one of {DISPATCHES}")
    if not 0.0 <= self.router_jitter < 1.0:
      bad(f"router_jitter={self.router_jitter} must be in [0, 1)")
    if self.aux_loss_weight < 0 or self.z_loss_weight < 0:
      bad("aux_loss_weight and z_loss_weight must be >= 0")

  def is_moe_layer(self, index: int) -> bool:
    """Whether block `index` (0-based) is a MoE block."""
    return (index + 1) % self.every == 0

  def num_moe_layers(self, num_layers: int) -> int:
    return num_layers // self.every

  def capacity(self, group_size: int, deterministic: bool) -> int:
    """Slots per expert per group: ceil(k * factor * s / E), at least 1, at most s."""
    if self.dropless:
      return group_size
    factor = self.capacity_factor_eval if deterministic else self.capacity_factor
    c = math.ceil(self.experts_per_token * factor * group_size / self.num_experts)
    return max(1, min(group_size, c))


class Routing(NamedTuple):
  """Where each (token, choice) goes; shapes [groups, s, k] unless noted."""

  expert: jax.Array  # int32 expert index
  position: jax.Array  # int32 slot in that expert's buffer (may be >= capacity)
  kept: jax.Array  # bool: routed and within capacity
  gate: jax.Array  # float32 combine weight (0 where not kept)
  probs: jax.Array  # float32 [g, s, E] softmax over all experts
  stats: dict  # float32 aux_loss, z_loss, expert_fraction [E], dropped_fraction


def route(logits, k: int, capacity: int, order: str, token_mask=None) -> Routing:
  """Top-k routing with capacity from router logits [groups, s, E] (float32).

  token_mask [groups, s] (bool, None = all tokens) marks real tokens; others
  are not routed and not counted in the statistics.
  """
  logits = logits.astype(jnp.float32)
  g, s, e = logits.shape
  mask = jnp.ones((g, s), bool) if token_mask is None else token_mask.astype(bool)
  probs = jax.nn.softmax(logits, axis=-1)  # [g, s, E]
  if order == "softmax_topk":
    gate, expert = jax.lax.top_k(probs, k)  # [g, s, k]
  else:
    top_logits, expert = jax.lax.top_k(logits, k)  # [g, s, k]
    gate = jax.nn.softmax(top_logits, axis=-1)
  choice = jax.nn.one_hot(expert, e, dtype=jnp.int32) * mask[..., None, None]  # [g, s, k, E]
  # Priority: all first choices (in token order), then all second choices, ...
  by_rank = jnp.swapaxes(choice, 1, 2).reshape(g, k * s, e)  # [g, k*s, E]
  position = jnp.cumsum(by_rank, axis=1) - 1  # [g, k*s, E]
  position = jnp.swapaxes(position.reshape(g, k, s, e), 1, 2)  # [g, s, k, E]
  position = jnp.sum(position * choice, axis=-1)  # [g, s, k]
  kept = mask[..., None] & (position < capacity)  # [g, s, k]
  gate = jnp.where(kept, gate, 0.0)

  maskf = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(maskf), 1.0)
  fraction = jnp.sum(choice, axis=(0, 1, 2)).astype(jnp.float32) / (n * k)  # [E]
  mean_prob = jnp.sum(probs * maskf[..., None], axis=(0, 1)) / n  # [E]
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [g, s]
  stats = dict(
    aux_loss=e * jnp.sum(fraction * mean_prob),
    z_loss=jnp.sum(jnp.square(log_z) * maskf) / n,
    expert_fraction=fraction,
    dropped_fraction=jnp.sum((mask[..., None] & ~kept).astype(jnp.float32)) / (n * k),
  )
  return Routing(expert.astype(jnp.int32), position.astype(jnp.int32), kept, gate, probs, stats)


def _dispatch_einsum(x, r: Routing, num_experts: int, capacity: int):
  """x [g, s, d] -> expert inputs [E, g, C, d] and the combine tensor [g, s, E, C]."""
  e_hot = jax.nn.one_hot(r.expert, num_experts, dtype=x.dtype)  # [g, s, k, E]
  c_hot = jax.nn.one_hot(r.position, capacity, dtype=x.dtype)  # [g, s, k, C] (0 if >= C)
  kept = r.kept.astype(x.dtype)[..., None]  # [g, s, k, 1]
  dispatch = jnp.einsum("gske,gskc->gsec", e_hot * kept, c_hot)  # [g, s, E, C]
  combine = jnp.einsum("gske,gskc->gsec", e_hot * (r.gate.astype(x.dtype)[..., None]), c_hot)
  inputs = jnp.einsum("gsec,gsd->egcd", dispatch, x)  # [E, g, C, d]
  return inputs, combine


def _slots(r: Routing, num_experts: int, capacity: int):
  """Flat slot e * C + c of every (token, choice) [g, s, k]; E * C where not kept."""
  slot = r.expert * capacity + r.position
  return jnp.where(r.kept, slot, num_experts * capacity)


@jax.custom_vjp
def _gather_rows(src, index, valid, back_index, back_valid):
  """out[g, m] = src[g, index[g, m]] * valid[g, m]: src [g, n, d], index/valid [g, m].

  The backward pass is a gather too (no scatter-add): dsrc[g, i] =
  sum_j dout[g, back_index[g, i, j]] * back_valid[g, i, j], where back_index
  lists the rows m that read row i (valid only if the forward map is exactly that).
  """
  return jnp.take_along_axis(src, index[..., None], axis=1) * valid[..., None].astype(src.dtype)


def _gather_rows_fwd(src, index, valid, back_index, back_valid):
  return _gather_rows(src, index, valid, back_index, back_valid), (back_index, back_valid)


def _gather_rows_bwd(res, dout):
  back_index, back_valid = res
  g, n, j = back_index.shape
  picked = jnp.take_along_axis(dout, back_index.reshape(g, n * j)[..., None], axis=1)
  picked = picked.reshape(g, n, j, dout.shape[-1])  # [g, n, j, d]
  dsrc = jnp.einsum("gnjd,gnj->gnd", picked, back_valid.astype(dout.dtype))
  return dsrc, None, None, None, None


_gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


class _SlotMaps(NamedTuple):
  """Index maps between (token, choice) pairs [g, s*k] and expert slots [g, E*C]."""

  slot: jax.Array  # [g, s*k] slot of each pair (clipped; see kept)
  kept: jax.Array  # [g, s*k] float
  token_of_slot: jax.Array  # [g, E*C]
  pair_of_slot: jax.Array  # [g, E*C] flat (token, choice) index
  filled: jax.Array  # [g, E*C] float


def _slot_maps(r: Routing, num_experts: int, capacity: int) -> _SlotMaps:
  g, s, k = r.expert.shape
  n_slots = num_experts * capacity
  flat = _slots(r, num_experts, capacity).reshape(g, s * k)  # [g, s*k], n_slots = dropped
  rows = jnp.arange(g)[:, None]
  pair = jnp.broadcast_to(jnp.arange(s * k), (g, s * k))
  pair_of_slot = jnp.zeros((g, n_slots), jnp.int32).at[rows, flat].set(pair, mode="drop")
  filled = jnp.zeros((g, n_slots), jnp.float32).at[rows, flat].set(1.0, mode="drop")
  return _SlotMaps(jnp.minimum(flat, n_slots - 1), r.kept.reshape(g, s * k).astype(jnp.float32),
                   pair_of_slot // k, pair_of_slot, filled)  # fmt: skip


def _dispatch_gather(x, m: _SlotMaps, num_experts: int, capacity: int):
  """x [g, s, d] -> expert inputs [E, g, C, d] by gathering each slot's token."""
  g, s, d = x.shape
  k = m.slot.shape[1] // s
  back = m.slot.reshape(g, s, k)  # the slots each token was copied to
  inputs = _gather_rows(x, m.token_of_slot, m.filled, back, m.kept.reshape(g, s, k))
  return jnp.swapaxes(inputs.reshape(g, num_experts, capacity, d), 0, 1)  # [E, g, C, d]


def _combine_gather(y, m: _SlotMaps, gate):
  """Expert outputs y [E, g, C, d] -> [g, s, d]: gate-weighted sum over each token's choices."""
  e, g, c, d = y.shape
  s, k = gate.shape[1:]
  flat = jnp.swapaxes(y, 0, 1).reshape(g, e * c, d)  # [g, E*C, d]
  picked = _gather_rows(flat, m.slot, m.kept, m.pair_of_slot[..., None], m.filled[..., None])
  return jnp.einsum("gskd,gsk->gsd", picked.reshape(g, s, k, d), gate.astype(y.dtype))


def _expert_init(std: float, names):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


class MoE(nn.Module):
  """Routed experts in place of an MLP: x [batch, length, embed] -> [batch, length, embed].

  Params (plain arrays, not Dense): router [embed, E] (float32 use);
  wi [E, embed, mlp] or wi_gate and wi_up (gated kinds); wo [E, mlp, embed];
  with use_bias also bi / bi_gate / bi_up [E, mlp] and bo [E, embed]. Expert
  axes carry the logical name "expert" (sharded on the `expert` mesh axis).
  """

  config: MoEConfig
  d_ff: int
  kind: str = "gelu"
  use_bias: bool = True
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _param(self, name, shape, axes, std):
    return self.param(name, _expert_init(std, axes), shape, self.param_dtype).astype(self.dtype)

  def _bias(self, name, shape, axes):
    init = nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)
    return self.param(name, init, shape, self.param_dtype).astype(self.dtype)

  def experts(self, inputs):
    """Every expert's FFN on its slots: [E, g, C, embed] -> [E, g, C, embed]."""
    if self.kind not in _ACTIVATIONS:
      raise ValueError(f"mlp={self.kind!r} is not one of {MLPS}")
    act = _ACTIVATIONS[self.kind]
    e, d, f = self.config.num_experts, inputs.shape[-1], self.d_ff
    in_axes, out_axes = ("expert", "embed", "mlp"), ("expert", "mlp", "embed")

    def project_in(name):
      h = jnp.einsum("egcd,edf->egcf", inputs, self._param(name, (e, d, f), in_axes,
                                                            self.init_std))  # fmt: skip
      if self.use_bias:
        h = h + self._bias(name.replace("wi", "bi"), (e, f), ("expert", "mlp"))[:, None, None]
      return h  # [E, g, C, mlp]

    if self.kind in ("swiglu", "geglu"):
      h = act(project_in("wi_gate")) * project_in("wi_up")
    else:
      h = act(project_in("wi"))
    h = nn.with_logical_constraint(h, ("act_expert", "act_batch", None, "act_mlp"))
    y = jnp.einsum("egcf,efd->egcd", h, self._param("wo", (e, f, d), out_axes, self.out_init_std))
    if self.use_bias:
      y = y + self._bias("bo", (e, d), ("expert", "embed"))[:, None, None]
    return y  # [E, g, C, embed]

  @nn.compact
  def __call__(self, x, token_mask=None, deterministic: bool = True):
    """x [batch, length, embed]; token_mask [batch, length] (None = all real tokens)."""
    cfg = self.config
    b, s, d = x.shape  # a group is one row: g = batch
    e, k = cfg.num_experts, cfg.experts_per_token
    router = self.param("router", _expert_init(self.init_std, ("embed", None)), (d, e),
                        self.param_dtype)  # fmt: skip
    router_in = x.astype(jnp.float32)
    if cfg.router_jitter and not deterministic:
      eps = cfg.router_jitter
      router_in = router_in * jax.random.uniform(
        self.make_rng("dropout"), router_in.shape, jnp.float32, 1.0 - eps, 1.0 + eps
      )
    logits = jnp.einsum("gsd,de->gse", router_in, router.astype(jnp.float32))  # [g, s, E]
    capacity = cfg.capacity(s, deterministic)
    r = route(logits, k, capacity, cfg.router_order, token_mask)
    self.sow("moe", "stats", r.stats)
    x = x.astype(self.dtype)
    if cfg.dispatch == "einsum":
      inputs, combine = _dispatch_einsum(x, r, e, capacity)
    else:
      maps = _slot_maps(r, e, capacity)
      inputs = _dispatch_gather(x, maps, e, capacity)
    inputs = nn.with_logical_constraint(inputs, ("act_expert", "act_batch", None, "act_embed"))
    y = self.experts(inputs)  # [E, g, C, embed]
    y = nn.with_logical_constraint(y, ("act_expert", "act_batch", None, "act_embed"))
    if cfg.dispatch == "einsum":
      out = jnp.einsum("gsec,egcd->gsd", combine, y)  # [g, s, embed]
    else:
      out = _combine_gather(y, maps, r.gate)
    return nn.with_logical_constraint(out, ("act_batch", "act_length", "act_embed"))


def layer_stats(moe_collection) -> list:
  """The per-layer stats dicts sown into a "moe" collection, in layer order."""
  found = []

  def walk(node):
    if isinstance(node, dict) or hasattr(node, "items"):
      for key in sorted(node, key=_natural):
        if key == "stats":
          found.extend(node[key])
        else:
          walk(node[key])

  walk(moe_collection)
  return found


def _natural(key: str):
  """Sort layers_2 before layers_10."""
  head, _, tail = str(key).rpartition("_")
  return (head, int(tail)) if tail.isdigit() else (str(key), -1)


def summarize(moe_collection, cfg: MoEConfig):
  """(penalty, metrics) from a forward pass's "moe" collection.

  penalty = aux_loss_weight * sum_layers aux_loss + z_loss_weight * sum_layers
  z_loss (add it to the mean per-token loss). metrics (float32 scalars) hold
  the per-layer means: moe/aux_loss, moe/z_loss, moe/dropped_fraction and
  moe/expert_fraction_{i}.
  """
  stats = layer_stats(moe_collection)
  if not stats:
    return jnp.zeros((), jnp.float32), {}
  stacked = {key: jnp.stack([s[key] for s in stats]) for key in stats[0]}
  penalty = cfg.aux_loss_weight * jnp.sum(stacked["aux_loss"])
  penalty = penalty + cfg.z_loss_weight * jnp.sum(stacked["z_loss"])
  metrics = {f"moe/{key}": jnp.mean(stacked[key]) for key in
             ("aux_loss", "z_loss", "dropped_fraction")}  # fmt: skip
  fractions = jnp.mean(stacked["expert_fraction"], axis=0)  # [E]
  for i in range(cfg.num_experts):
    metrics[f"moe/expert_fraction_{i}"] = fractions[i]
  return penalty, metrics


def add_to_loss(loss_sum, weight, sums: dict, moe_collection, cfg: Optional[MoEConfig]):
  """Adds a MoE model's penalty (per unit of `weight`) and metrics to an engine loss.

  The engine divides loss and sums by the batch's total weight, so both are
  multiplied by `weight` here: the logged train/moe/* values are the per-layer
  means and train/loss includes the penalty.
  """
  if cfg is None:
    return loss_sum, (weight, sums)
  penalty, metrics = summarize(moe_collection, cfg)
  sums = dict(sums)
  sums.update({k: v * weight for k, v in metrics.items()})
  return loss_sum + penalty * weight, (weight, sums)


def ffn_params(d_model: int, d_ff: int, kind: str, use_bias: bool) -> int:
  """Parameters of one dense MLP (or one expert) of `kind` with widths d_model, d_ff."""
  n_in = 2 if kind in ("swiglu", "geglu") else 1
  return (n_in + 1) * d_model * d_ff + ((n_in * d_ff + d_model) if use_bias else 0)


def moe_params(cfg: MoEConfig, d_model: int, d_ff: int, kind: str, use_bias: bool):
  """(total, active) parameters of one MoE layer: router + E experts / router + k experts."""
  expert = ffn_params(d_model, cfg.d_ff or d_ff, kind, use_bias)
  router = d_model * cfg.num_experts
  return router + cfg.num_experts * expert, router + cfg.experts_per_token * expert
