"""FrozenLake-v1: gymnasium's slippery 4x4 gridworld, for tabular methods.

    S F F F        S start, F frozen, H hole (episode ends, reward 0),
    F H F H        G goal (episode ends, reward 1).
    F F F H
    H F F G

Actions: 0 left, 1 down, 2 right, 3 up. When slippery, the agent moves in the
intended direction with probability 1/3 and in each of the two perpendicular
directions with probability 1/3; moves off the grid leave it in place.
Episodes are truncated after 100 steps. Observations are the cell index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from llmrl.rl.envs.core import Discrete, Environment

MAP_4X4 = ("SFFF", "FHFH", "FFFH", "HFFG")
_MOVES = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]])  # (drow, dcol) for L, D, R, U


def transition_table(grid: tuple[str, ...], slippery: bool) -> np.ndarray:
  """[states, actions, 3] next states (the three equally likely outcomes)."""
  rows, cols = len(grid), len(grid[0])
  table = np.zeros((rows * cols, 4, 3), np.int32)
  for s in range(rows * cols):
    r, c = divmod(s, cols)
    for a in range(4):
      outcomes = [(a - 1) % 4, a, (a + 1) % 4] if slippery else [a, a, a]
      for i, b in enumerate(outcomes):
        if grid[r][c] in "HG":
          table[s, a, i] = s
          continue
        nr = min(max(r + _MOVES[b][0], 0), rows - 1)
        nc = min(max(c + _MOVES[b][1], 0), cols - 1)
        table[s, a, i] = nr * cols + nc
  return table


@struct.dataclass
class FrozenLakeParams:
  max_steps: int = 100


@struct.dataclass
class FrozenLakeState:
  pos: jax.Array   # cell index
  time: jax.Array


class FrozenLake(Environment):
  """Cross a frozen lake from S to G without falling into a hole."""

  name = "FrozenLake-v1"

  def __init__(self, grid: tuple[str, ...] = MAP_4X4, slippery: bool = True):
    self.grid, self.slippery = tuple(grid), slippery
    self.num_states = len(grid) * len(grid[0])
    flat = "".join(grid)
    self._next = jnp.asarray(transition_table(self.grid, slippery))
    self._hole = jnp.asarray([ch == "H" for ch in flat])
    self._goal = jnp.asarray([ch == "G" for ch in flat])
    self._start = flat.index("S")

  @property
  def default_params(self) -> FrozenLakeParams:
    return FrozenLakeParams()

  def reset(self, key, params):
    del key
    state = FrozenLakeState(jnp.int32(self._start), jnp.int32(0))
    return state.pos, state

  def step(self, key, state, action, params):
    outcome = jax.random.randint(key, (), 0, 3)
    pos = self._next[state.pos, action, outcome]
    reward = self._goal[pos].astype(jnp.float32)
    terminated = self._hole[pos] | self._goal[pos]
    time = state.time + 1
    truncated = (time >= params.max_steps) & ~terminated
    return pos, FrozenLakeState(pos, time), reward, terminated, truncated, {}

  def observation_space(self, params):
    return Discrete(self.num_states)

  def action_space(self, params):
    return Discrete(4)
