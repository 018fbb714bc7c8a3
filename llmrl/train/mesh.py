"""Device mesh and logical-axis sharding rules: sharding is configuration.

Every parameter and main activation carries logical axis names (set by the
models with `nn.with_logical_partitioning` / `nn.with_logical_constraint`);
`LOGICAL_RULES` maps them onto the mesh axes (data, fsdp, tensor, expert).
One device is the mesh (1, 1, 1, 1).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llmrl.config import ConfigError

AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both

# (logical name, mesh axis or axes or None). Params first, then activations.
LOGICAL_RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("layers", None),
    ("norm", None),
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_expert", "expert"),
)


def default_config() -> ml_collections.ConfigDict:
  """`config.mesh`: devices per axis; -1 on one axis takes all remaining devices."""
  c = ml_collections.ConfigDict()
  c.data = -1    # data parallelism (replicated params)
  c.fsdp = 1     # fully-sharded data parallelism (params sharded on 'embed')
  c.tensor = 1   # tensor parallelism (heads, mlp, vocab)
  c.expert = 1   # expert parallelism (mixture-of-experts layers)
  return c


def mesh_shape(c: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Resolves -1 and checks the product equals the device count."""
  shape = [int(c[a]) for a in AXES]
  if shape.count(-1) > 1:
    raise ConfigError("only one of config.mesh.{data,fsdp,tensor,expert} may be -1.")
  for a, s in zip(AXES, shape):
    if s == 0 or s < -1:
      raise ConfigError(f"config.mesh.{a}={s} must be a positive size or -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(
          f"config.mesh sizes {dict(zip(AXES, shape))} do not divide the "
          f"{num_devices} available devices; pick sizes whose product divides it.")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(
        f"config.mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} devices but "
        f"{num_devices} are available; set one axis to -1 or change the sizes.")
  return tuple(shape)


def make_mesh(c: ml_collections.ConfigDict, devices=None) -> Mesh:
  """Builds the (data, fsdp, tensor, expert) mesh over all (global) devices."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(c, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # odd device counts on CPU: fall back to plain order.
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES)


def batch_parallelism(mesh: Mesh) -> int:
  """How many ways the batch dimension is split."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a [batch, ...] input array: batch over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
  """NamedShardings for a tree of (abstract) logically-partitioned values."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(shapes: Any, shardings: Any) -> None:
  """Raises ConfigError if a sharded dimension is not divisible by its mesh size."""
  def check(path, shape, sharding):
    if not isinstance(sharding, NamedSharding):
      return
    for dim, axes in zip(shape.shape, sharding.spec):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      ways = math.prod(sharding.mesh.shape[a] for a in axes)
      if dim % ways:
        name = jax.tree_util.keystr(path)
        raise ConfigError(
            f"parameter {name} of shape {shape.shape} cannot be split {ways} ways "
            f"over mesh axes {axes}; change config.mesh or the model width.")
  jax.tree_util.tree_map_with_path(check, shapes, shardings)


def like_params(tree_shapes: Any, params_shapes: Any, params_shardings: Any,
                default: NamedSharding) -> Any:
  """Shardings for e.g. optimizer state: subtrees shaped like params get params' layout."""
  p_def = jax.tree.structure(params_shapes)
  p_shapes = [x.shape for x in jax.tree.leaves(params_shapes)]

  def matches(node):
    if jax.tree.structure(node) != p_def:
      return False
    return [getattr(x, "shape", None) for x in jax.tree.leaves(node)] == p_shapes

  return jax.tree.map(
      lambda node: params_shardings if matches(node) else default,
      tree_shapes, is_leaf=matches)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_RULES):
  """Makes `mesh` and the logical rules current (for activation constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield mesh
