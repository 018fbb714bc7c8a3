"""`config.model.moe`: the mixture-of-experts block shared by the GPT, BERT and T5 tasks."""

from __future__ import annotations

import ml_collections

from llmrl.config import ConfigError, check_enum, check_positive
from llmrl.models.moe import DISPATCHES, ROUTER_ORDERS, MoEConfig


def config_block() -> ml_collections.ConfigDict:
  """`config.model.moe` (num_experts = 0: dense model, the other keys are ignored)."""
  c = ml_collections.ConfigDict()
  c.num_experts = 0             # experts per MoE block; 0 = no MoE (dense MLPs)
  c.experts_per_token = 2       # top-k: 1 = Switch, 2 = GShard / Mixtral
  c.every = 2                   # every Nth block is MoE (blocks N-1, 2N-1, ...); 1 = all
  c.d_ff = 0                    # hidden width of each expert; 0 = config.model.d_ff
  c.capacity_factor = 1.25      # expert capacity (train) in units of k * tokens / experts
  c.capacity_factor_eval = 2.0  # the same when deterministic (evaluation, decoding)
  c.dropless = False            # no capacity limit: nothing is dropped
  c.router_order = "softmax_topk"  # "softmax_topk" | "topk_softmax" (Mixtral)
  c.router_jitter = 0.0         # multiplicative router-input noise in training
  c.aux_loss_weight = 0.01      # Switch load-balancing loss weight (per MoE block)
  c.z_loss_weight = 0.001       # router z-loss weight (per MoE block)
  c.dispatch = "einsum"         # "einsum" (one-hot dispatch/combine) | "gather" (index gathers)
  return c


def validate(model: ml_collections.ConfigDict, num_layers: int) -> None:
  """Checks config.model.moe (if present and enabled) with key names."""
  c = model.get("moe")
  if c is None or not c.num_experts:
    return
  check_positive("model.moe.num_experts", c.num_experts)
  check_positive("model.moe.every", c.every)
  if not 1 <= c.experts_per_token <= c.num_experts:
    raise ConfigError(f"config.model.moe.experts_per_token={c.experts_per_token} must be in "
                      f"[1, config.model.moe.num_experts={c.num_experts}].")
  if c.every > num_layers:
    raise ConfigError(f"config.model.moe.every={c.every} is larger than the {num_layers} layers: "
                      "no block would be MoE; lower it (1 = every block).")
  for k in ("capacity_factor", "capacity_factor_eval"):
    check_positive(f"model.moe.{k}", c[k])
  if c.d_ff < 0:
    raise ConfigError(f"config.model.moe.d_ff={c.d_ff} must be >= 0 (0 = config.model.d_ff).")
  check_enum("model.moe.router_order", c.router_order, ROUTER_ORDERS)
  check_enum("model.moe.dispatch", c.dispatch, DISPATCHES)
  if not 0.0 <= c.router_jitter < 1.0:
    raise ConfigError(f"config.model.moe.router_jitter={c.router_jitter} must be in [0, 1).")
  for k in ("aux_loss_weight", "z_loss_weight"):
    if c[k] < 0:
      raise ConfigError(f"config.model.moe.{k}={c[k]} must be >= 0.")


def make(model: ml_collections.ConfigDict) -> MoEConfig | None:
  """MoEConfig from config.model.moe (after validate); None for a dense model."""
  c = model.get("moe")
  if c is None or not c.num_experts:
    return None
  return MoEConfig(
      num_experts=c.num_experts, experts_per_token=c.experts_per_token, every=c.every,
      d_ff=c.d_ff or None, capacity_factor=c.capacity_factor,
      capacity_factor_eval=c.capacity_factor_eval, dropless=c.dropless,
      router_order=c.router_order, router_jitter=c.router_jitter,
      aux_loss_weight=c.aux_loss_weight, z_loss_weight=c.z_loss_weight, dispatch=c.dispatch)
