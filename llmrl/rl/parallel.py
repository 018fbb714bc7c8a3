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
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec as P

AXIS = "pair"


def _zeros(shapes):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


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

    # Each device's results travel as one vector: one all-gather per call, not one
    # per leaf (a CPU collective costs tens of microseconds).
    _, unravel_out = ravel_pytree((_zeros(shape_a), _zeros(shape_b)))

    def body(*args):
      out = jax.lax.cond(jax.lax.axis_index(AXIS) == 0,
                         lambda a: (fa(*a), _zeros(shape_b)),
                         lambda a: (_zeros(shape_a), fb(*a)), args)
      return ravel_pytree(out)[0][None]  # [1, size] per device

    out = jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=P(AXIS),
                        check_vma=False)(*args)  # [2, size]
    return unravel_out(out[0])[0], unravel_out(out[1])[1]

  return both
