"""Any gymnax environment behind llmrl's environment API.

gymnax >= 1.0 returns (obs, state, reward, terminated, truncated, info) from
`step`; older releases return (obs, state, reward, done, info) with time
limits folded into `done`. We call gymnax's non-resetting `step_env` /
`reset_env` (our `AutoReset` does the resetting) and recover the time-limit
flag so truncation is reported separately on every gymnax version.
"""

from __future__ import annotations

import jax.numpy as jnp

from llmrl.rl.envs.core import Environment


def gymnax_names() -> list[str]:
  """Registered gymnax environment names ([] when gymnax is not installed)."""
  try:
    import gymnax
  except ImportError:
    return []
  return list(gymnax.registered_envs)


class GymnaxEnv(Environment):
  """Adapts `gymnax.make(name)`; params are gymnax's EnvParams."""

  def __init__(self, name: str, **kwargs):
    import gymnax
    self.env, self._params = gymnax.make(name, **kwargs)
    self.name = name
    self._new_api = hasattr(type(self.env), "is_truncated")

  @property
  def default_params(self):
    return self._params

  def reset(self, key, params):
    return self.env.reset_env(key, params)

  def step(self, key, state, action, params):
    obs, state, reward, done, info = self.env.step_env(key, state, action, params)
    max_steps = getattr(params, "max_steps_in_episode", None)
    if max_steps is not None and hasattr(state, "time"):
      truncated = state.time >= max_steps
    else:
      truncated = jnp.bool_(False)
    # gymnax >= 1.0 (which has `is_truncated`) reports only natural terminals in
    # `done`; older releases fold the time limit into it.
    terminated = jnp.asarray(done, bool)
    if not self._new_api:
      terminated = terminated & ~truncated
    truncated = truncated & ~terminated
    info = {k: v for k, v in info.items() if k in ("discount",)}
    return obs, state, jnp.asarray(reward, jnp.float32).reshape(()), terminated, truncated, info

  def observation_space(self, params):
    return self.env.observation_space(params)

  def action_space(self, params):
    return self.env.action_space(params)
