"""CartPole-v1: the Barto, Sutton & Anderson (1983) cart-pole with gymnasium's constants.

Euler integration at tau = 0.02 s; +1 reward per step (including the last);
terminated when |x| > 2.4 or |theta| > 12 degrees; truncated at 500 steps.
The initial state is uniform in [-0.05, 0.05]^4. Action 0 pushes left, 1 right.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from llmrl.rl.envs.core import Box, Discrete, Environment


@struct.dataclass
class CartPoleParams:
  gravity: float = 9.8
  masscart: float = 1.0
  masspole: float = 0.1
  length: float = 0.5          # half the pole's length
  force_mag: float = 10.0
  tau: float = 0.02            # seconds between state updates
  theta_threshold: float = 12 * 2 * 3.141592653589793 / 360
  x_threshold: float = 2.4
  max_steps: int = 500


@struct.dataclass
class CartPoleState:
  x: jax.Array
  x_dot: jax.Array
  theta: jax.Array
  theta_dot: jax.Array
  time: jax.Array


class CartPole(Environment):
  """Balance a pole on a cart by pushing the cart left or right."""

  name = "CartPole-v1"

  @property
  def default_params(self) -> CartPoleParams:
    return CartPoleParams()

  def reset(self, key, params):
    s = jax.random.uniform(key, (4,), minval=-0.05, maxval=0.05)
    state = CartPoleState(s[0], s[1], s[2], s[3], jnp.int32(0))
    return s, state

  def step(self, key, state, action, params):
    del key
    p = params
    total_mass = p.masspole + p.masscart
    polemass_length = p.masspole * p.length
    force = jnp.where(action == 1, p.force_mag, -p.force_mag)
    cos, sin = jnp.cos(state.theta), jnp.sin(state.theta)
    temp = (force + polemass_length * state.theta_dot ** 2 * sin) / total_mass
    theta_acc = (p.gravity * sin - cos * temp) / (
        p.length * (4.0 / 3.0 - p.masspole * cos ** 2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    new = CartPoleState(
        x=state.x + p.tau * state.x_dot,
        x_dot=state.x_dot + p.tau * x_acc,
        theta=state.theta + p.tau * state.theta_dot,
        theta_dot=state.theta_dot + p.tau * theta_acc,
        time=state.time + 1)
    terminated = ((jnp.abs(new.x) > p.x_threshold) |
                  (jnp.abs(new.theta) > p.theta_threshold))
    truncated = (new.time >= p.max_steps) & ~terminated
    obs = jnp.stack([new.x, new.x_dot, new.theta, new.theta_dot])
    return obs, new, jnp.float32(1.0), terminated, truncated, {}

  def observation_space(self, params):
    inf = jnp.finfo(jnp.float32).max
    high = jnp.array([2 * params.x_threshold, inf, 2 * params.theta_threshold, inf])
    return Box(-high, high, (4,))

  def action_space(self, params):
    return Discrete(2)
