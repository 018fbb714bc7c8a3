"""The one training loop: pretraining, SFT, reward modelling and sweeps all use it.

A `Task` says what to train (params initialiser, loss, data); `train` does the
rest: mesh, sharded init, the jitted step, checkpoints with exact resume,
metrics, the progress line and the NaN guard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from llmrl.config import ConfigError, check_positive
from llmrl.train import mesh as mesh_lib
from llmrl.train.checkpoint import Checkpointer
from llmrl.train.metrics import MetricWriter, Progress
from llmrl.train.optim import make_optimizer
from llmrl.train.step import LossFn, TrainState, compiler_options, make_train_step

log = logging.getLogger("llmrl")


class TrainResult(NamedTuple):
  state: TrainState   # final (sharded) train state
  metrics: dict       # last logged metrics as host floats, with "step"


class NonFiniteError(RuntimeError):
  """Raised when a step's loss or gradient norm is NaN/Inf; the run stops there."""


@dataclasses.dataclass
class Task:
  """What an experiment plugs into the engine."""
  init_params: Callable[[jax.Array], Any]  # rng -> params, logically partitioned
  loss_fn: LossFn                          # (params, batch, rng) -> (sum, (weight, sums))
  data: Iterator[dict]                     # this process's batches; get_state/set_state
  tokens_per_step: float = 0.0             # global tokens consumed by one step
  flops_per_step: float = 0.0              # global training FLOPs of one step
  trainable_mask: Any = None               # optional pytree of bools (frozen = False)
  initial_params: Callable[[], Any] | None = None  # host params to start from (else init)


def default_config() -> ml_collections.ConfigDict:
  """`config.train`: loop, batch and checkpoint settings."""
  c = ml_collections.ConfigDict()
  c.steps = 1000              # optimizer updates
  c.seq_len = 128             # tokens per example (sequence tasks)
  c.global_batch_size = 32    # examples per update, over all processes
  c.microbatches = 1          # gradient accumulation: the batch is split in this many
  c.log_every = 50            # metrics to host, jsonl/TensorBoard and the progress line
  c.checkpoint_every = 500    # also at the last step
  c.keep_checkpoints = 3
  c.async_checkpoint = True
  c.peak_flops = 0.0          # device peak FLOP/s for the MFU figure (0 = not shown)
  return c


def validate(c: ml_collections.ConfigDict, mesh) -> None:
  """Checks config.train against the mesh before anything compiles."""
  for k in ("steps", "global_batch_size", "microbatches", "log_every",
            "checkpoint_every", "keep_checkpoints"):
    check_positive(f"train.{k}", c[k])
  b, m = c.global_batch_size, c.microbatches
  if b % m:
    raise ConfigError(f"config.train.microbatches={m} does not divide "
                      f"config.train.global_batch_size={b}.")
  ways = mesh_lib.batch_parallelism(mesh)
  if (b // m) % ways:
    raise ConfigError(
        f"the microbatch size {b // m} (config.train.global_batch_size={b} / "
        f"microbatches={m}) is not divisible by the data-parallel size {ways} "
        f"(mesh data*fsdp); use a multiple of {ways}.")
  if b % jax.process_count():
    raise ConfigError(f"config.train.global_batch_size={b} is not divisible by the "
                      f"{jax.process_count()} processes.")


def local_batch_size(c: ml_collections.ConfigDict) -> int:
  """Examples this process feeds per step."""
  return c.global_batch_size // jax.process_count()


def _first_nonfinite(metrics: dict) -> str:
  for k in sorted(metrics, key=lambda k: (k != "train/loss", k)):
    if not math.isfinite(metrics[k]):
      return f"{k}={metrics[k]}"
  return "train/finite=0"


class StateSetup(NamedTuple):
  state: TrainState      # restored or freshly initialised, in its sharded layout
  shardings: TrainState  # NamedSharding of every leaf
  start: int             # step to continue from (0 when fresh)
  data_state: Any        # this process's restored data-iterator state, or None


def abstract_state(init_params: Callable, tx, mesh) -> tuple[TrainState, TrainState]:
  """(TrainState of ShapeDtypeStructs carrying their shardings, the shardings) of a task.

  Nothing is materialised: shapes come from `jax.eval_shape`, so this also
  serves AOT lowering of models that do not fit the host.
  """
  rep = mesh_lib.replicated(mesh)
  boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  p_sh = mesh_lib.logical_shardings(boxed, mesh)
  p_shapes = nn.meta.unbox(boxed)
  mesh_lib.check_divisible(p_shapes, p_sh)
  o_shapes = jax.eval_shape(tx.init, p_shapes)
  o_sh = mesh_lib.like_params(o_shapes, p_shapes, p_sh, rep)
  state_sh = TrainState(step=rep, params=p_sh, opt_state=o_sh, rng=rep)
  abstract = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=p_shapes,
                 opt_state=o_shapes, rng=jax.ShapeDtypeStruct((2,), jnp.uint32)),
      state_sh)
  return abstract, state_sh


def setup_state(seed: int, init_params: Callable, tx, mesh, ckpt: Checkpointer,
                initial_params: Callable | None = None) -> StateSetup:
  """Shardings for (params, optimizer state), then restore from `ckpt` or initialise.

  Parameters are initialised directly into their sharded layout (jit with
  out_shardings), or placed from `initial_params()` (host arrays) when given.
  """
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  abstract, state_sh = abstract_state(init_params, tx, mesh)
  restored = ckpt.restore_latest(abstract)
  if restored is not None:
    start, state, data_state = restored
    return StateSetup(state, state_sh, start, data_state)
  p_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract.params)
  with mesh_lib.activate(mesh):
    if initial_params is not None:
      params = jax.device_put(_check_like(initial_params(), p_shapes), state_sh.params)
    else:
      params = jax.jit(lambda k: nn.meta.unbox(init_params(k)),
                       out_shardings=state_sh.params)(init_rng)
    opt_state = jax.jit(tx.init, out_shardings=state_sh.opt_state)(params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                     rng=jax.device_put(jnp.asarray(state_rng, jnp.uint32), state_sh.rng))
  return StateSetup(state, state_sh, 0, None)


def jit_train_step(loss_fn: LossFn, tx, schedule, microbatches: int, mesh, state_sh: TrainState):
  """The task's train step jitted for `mesh`: (state, global batch) -> (state, metrics).

  The state is donated; the batch is split over the data-parallel axes.
  """
  batch_sh = mesh_lib.batch_sharding(mesh)
  micro_sh = NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES))
  return jax.jit(
      make_train_step(loss_fn, tx, schedule, microbatches,
                      lambda mb: jax.lax.with_sharding_constraint(mb, micro_sh)),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, mesh_lib.replicated(mesh)),
      donate_argnums=0, compiler_options=compiler_options(mesh.devices.flat[0].platform))


def lower_train_step(config: ml_collections.ConfigDict, task: Task, batch: dict, mesh=None):
  """AOT-lowers `task`'s train step for config.train/optim on config.mesh (or `mesh`).

  `batch` maps the batch keys to global-shape jax.ShapeDtypeStructs. Nothing
  is allocated, so a pod-sized model can be checked (shardings, shapes,
  divisibility) on a laptop with fake devices; `.compile()` the result to
  go further.
  """
  tc = config.train
  mesh = mesh or mesh_lib.make_mesh(config.mesh)
  validate(tc, mesh)
  tx, schedule = make_optimizer(config.optim, tc.steps, mask=task.trainable_mask)
  abstract, state_sh = abstract_state(task.init_params, tx, mesh)
  step_fn = jit_train_step(task.loss_fn, tx, schedule, tc.microbatches, mesh, state_sh)
  with mesh_lib.activate(mesh):
    return step_fn.lower(abstract, batch)


def train(config: ml_collections.ConfigDict, workdir: str, task: Task,
          *, mesh=None, stream=None) -> TrainResult:
  """Trains `task` for config.train.steps, resuming from workdir if possible."""
  tc = config.train
  mesh = mesh or mesh_lib.make_mesh(config.mesh)
  validate(tc, mesh)
  primary = jax.process_index() == 0
  tx, schedule = make_optimizer(config.optim, tc.steps, mask=task.trainable_mask)
  ckpt = Checkpointer(f"{workdir}/checkpoints", keep=tc.keep_checkpoints,
                      async_save=tc.async_checkpoint)
  writer = MetricWriter(workdir, enabled=primary)
  setup = setup_state(config.seed, task.init_params, tx, mesh, ckpt, task.initial_params)
  state, state_sh, start = setup.state, setup.shardings, setup.start
  if setup.data_state is not None:
    task.data.set_state(setup.data_state)
    writer.truncate_after(start)
    log.info("resumed from %s/checkpoints step %d", workdir, start)

  batch_sh = mesh_lib.batch_sharding(mesh)
  step_fn = jit_train_step(task.loss_fn, tx, schedule, tc.microbatches, mesh, state_sh)

  def to_global(local: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(batch_sh, np.asarray(v))
            for k, v in local.items()}

  progress = Progress(tc.steps, start, task.tokens_per_step, task.flops_per_step,
                      tc.peak_flops, stream=stream, enabled=primary)
  pending: list[tuple[int, dict]] = []
  last: dict = writer.last_record() if start else {}
  try:
    for step in range(start, tc.steps):
      batch = to_global(next(task.data))
      data_state = task.data.get_state()
      with mesh_lib.activate(mesh):
        state, metrics = step_fn(state, batch)
      done = step + 1
      pending.append((done, metrics))
      if step == start:  # the first step compiles: time from its end
        jax.block_until_ready(metrics)
        progress.start_timing(done)
      is_ckpt = done % tc.checkpoint_every == 0 or done == tc.steps
      if done % tc.log_every == 0 or is_ckpt:
        last = _flush(pending, writer, progress, ckpt)
        pending = []
      if is_ckpt:
        ckpt.save(done, state, data_state)
    writer.flush()
  finally:
    ckpt.close()
    writer.close()
  return TrainResult(state, last)


def _check_like(params: Any, shapes: Any) -> Any:
  """Raises ConfigError unless `params` has the structure and shapes of `shapes`."""
  got = {jax.tree_util.keystr(p): tuple(np.shape(x))
         for p, x in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(shapes)}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  bad = [f"{k}: {got[k]} vs {want[k]}" for k in want if k in got and got[k] != want[k]]
  if missing or extra or bad:
    raise ConfigError(
        "the initial params do not fit this model: "
        + "; ".join(filter(None, [f"missing {missing[:5]}" if missing else "",
                                  f"unexpected {extra[:5]}" if extra else "",
                                  f"shape mismatch {bad[:5]}" if bad else ""]))
        + ". Use a checkpoint of the same model config.")
  return params


def _flush(pending, writer, progress, ckpt) -> dict:
  """Brings pending step metrics to the host, stops on non-finite, logs the last."""
  host = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, host):
    if float(m["train/finite"]) != 1.0:
      vals = {k: float(v) for k, v in m.items()}
      ckpt.wait()
      good = ckpt.latest_step()
      raise NonFiniteError(
          f"non-finite value at step {step}: {_first_nonfinite(vals)}; the run "
          f"stopped and the last good checkpoint (step {good}) is kept. Lower "
          "config.optim.learning_rate or check the data.")
  step = pending[-1][0]
  metrics = {k: float(v) for k, v in host[-1].items()}
  metrics.update(progress.rates(step))
  writer.write(step, metrics)
  progress.report(step, metrics["train/loss"])
  return {"step": step, **metrics}
