"""Two independent computations of one jitted program on two devices at once.

XLA's CPU runtime runs the independent loops of one program one after another
(BUILD_NOTES.md, classic RL benchmark), so a program on one CPU device keeps
one core busy. With two CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`) each device runs its
part of an SPMD program on its own thread: `on_two_devices(fa, fb)` puts `fa`
on the first device and `fb` on the second, and both see all the arguments.
PPO uses it to run the actor's and the critic's minibatch epochs side by side.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

AXIS = "pair"


def _zeros(shapes):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _bits(x: jax.Array) -> jax.Array:
  """x's bits as a flat uint32 vector (exact for any dtype: no float rounding of ints)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  width = x.dtype.itemsize * 8
  if width < 32:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}")).astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 64-bit: two words each


def _pack(tree) -> jax.Array:
  return jnp.concatenate([_bits(jnp.asarray(x)) for x in jax.tree.leaves(tree)])


def _unpack(vec: jax.Array, shapes):
  """The pytree of `shapes` whose leaves `_pack` wrote into vec."""
  leaves, treedef = jax.tree.flatten(shapes)
  out, at = [], 0
  for s in leaves:
    size = int(np.prod(s.shape)) * (2 if s.dtype.itemsize == 8 else 1)
    v = vec[at:at + size]
    at += size
    if s.dtype == jnp.bool_:
      x = v.astype(jnp.bool_)
    elif s.dtype.itemsize < 4:
      x = jax.lax.bitcast_convert_type(v.astype(jnp.dtype(f"uint{s.dtype.itemsize * 8}")),
                                       s.dtype)
    elif s.dtype.itemsize == 8:
      x = jax.lax.bitcast_convert_type(v.reshape(-1, 2), s.dtype)
    else:
      x = jax.lax.bitcast_convert_type(v, s.dtype)
    out.append(x.reshape(s.shape))
  return jax.tree.unflatten(treedef, out)


def on_two_devices(fa: Callable, fb: Callable, devices=None) -> Callable:
  """args -> (fa(*args), fb(*args)), fa on devices[0] and fb on devices[1] concurrently.

  The arguments are copied to both devices (replicated); each device runs only
  its own function (a `lax.cond` on the device's index inside `shard_map`), and
  the results come back replicated. Works under `jax.vmap` (seeds). Numbers
  equal running fa and fb on one device.
  """
  devices = list(devices if devices is not None else jax.local_devices()[:2])
  if len(devices) != 2:
    raise ValueError(f"on_two_devices needs two devices, got {len(devices)}; on CPU set "
                     "XLA_FLAGS=--xla_force_host_platform_device_count=2 before jax starts.")
  mesh = Mesh(np.array(devices), (AXIS,))

  def both(*args):
    shape_a, shape_b = jax.eval_shape(fa, *args), jax.eval_shape(fb, *args)

    # Each device's results travel as the bits of one uint32 vector: one
    # all-gather per call, not one per leaf (a CPU collective costs tens of
    # microseconds), and integers stay exact.
    def body(*args):
      out = jax.lax.cond(jax.lax.axis_index(AXIS) == 0,
                         lambda a: (fa(*a), _zeros(shape_b)),
                         lambda a: (_zeros(shape_a), fb(*a)), args)
      return _pack(out)[None]  # [1, words] per device

    out = jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=P(AXIS),
                        check_vma=False)(*args)  # [2, words]
    shapes = (shape_a, shape_b)
    return _unpack(out[0], shapes)[0], _unpack(out[1], shapes)[1]

  return both
