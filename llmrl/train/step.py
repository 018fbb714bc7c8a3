"""The train state and the one pure, jitted train step every task shares.

A task supplies `loss_fn(params, batch, rng) -> (loss_sum, (weight, sums))`:
the loss summed over its examples/tokens, the total weight (token or pair
count) and a dict of other summed metrics. The step divides everything by the
total weight of the whole batch, so accumulating microbatches gives the same
update as one big batch.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, tuple[jax.Array, dict]]]


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data-iterator position."""
  step: jax.Array      # int32 scalar: number of updates applied
  params: Any          # float32 parameters (compute dtype is the model's)
  opt_state: Any       # optax state
  rng: jax.Array       # uint32[2] base key; step keys are fold_in(rng, step)


def compiler_options(platform: str) -> dict:
  """XLA options for the train step on `platform` ("cpu", "gpu", "tpu").

  On CPU, XLA removes optimization barriers before fusing; keeping them lets
  the models' `gradient_barrier` on the residual stream stop the backward
  pass's norm chains from being recomputed inside every consumer (6-layer GPT
  step 1.16x faster, BUILD_NOTES "Training step vs PyTorch").
  """
  return {"xla_disable_hlo_passes": "cse_barrier_expander"} if platform == "cpu" else {}


def _split_microbatches(batch: dict, n: int) -> dict:
  """[batch, ...] -> [n, batch // n, ...] (row i*(B/n)+j goes to microbatch i)."""
  return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def _global_norm(tree) -> jax.Array:
  return optax.tree.norm(tree)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, microbatches: int = 1,
                    microbatch_constraint: Callable | None = None):
  """Builds `train_step(state, batch) -> (state, metrics)` (pure; jit it outside).

  Non-finite loss or gradients leave params and optimizer state unchanged and
  set metrics['train/finite'] to 0 so the host can stop the run cleanly.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def compute_grads(params, batch, rng):
    if microbatches == 1:
      (loss, (weight, sums)), grads = grad_fn(params, batch, rng)
      return loss, weight, sums, grads
    micro = _split_microbatches(batch, microbatches)
    if microbatch_constraint is not None:
      micro = microbatch_constraint(micro)

    def body(carry, xs):
      i, mb = xs
      (loss, (weight, sums)), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (loss, weight, sums, grads)), None

    # Zero accumulators with the structure the loss produces.
    shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng))
    (loss_s, (weight_s, sums_s)), grads_s = shapes
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         (loss_s, weight_s, sums_s, grads_s))
    acc, _ = jax.lax.scan(body, zeros, (jnp.arange(microbatches), micro))
    return acc

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    loss_sum, weight, sums, grads = compute_grads(state.params, batch, rng)
    denom = jnp.maximum(weight, 1e-9)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = loss_sum / denom
    grad_norm = _global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(step=state.step + 1,
                              params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state))
    metrics = {f"train/{k}": v / denom for k, v in sums.items()}
    metrics.update({
        "train/loss": loss,
        "train/grad_norm": grad_norm,
        "train/param_norm": _global_norm(new_state.params),
        "train/learning_rate": schedule(state.step),
        "train/weight": weight,
        "train/finite": finite.astype(jnp.float32),
    })
    return new_state, metrics

  return train_step
