"""RL algorithms: exactness properties, the trust region, and learning results at small scale.

Thresholds are the issue's: PPO mean evaluation return >= 475 on CartPole-v1
within 500k steps on 3 of 3 seeds (vmapped); TRPO and REINFORCE >= 195;
Q-learning's greedy success rate on slippery FrozenLake within 0.05 of the
optimal policy's, computed here by value iteration on our own transition model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.config import ConfigError
from llmrl.rl import envs, loop
from llmrl.rl.algos import base
from llmrl.rl.algos.trpo import trpo_step
from llmrl.rl.config import base_config
from llmrl.rl.networks import ActorCritic


def cfg(algo, env="CartPole-v1", steps=10_000, log_every=10, **algo_kw):
  c = base_config(algo, env)
  c.train.total_steps, c.train.log_every, c.train.eval_episodes = steps, log_every, 0
  for k, v in algo_kw.items():
    c.algo[k] = v
  return c


def train_and_evaluate(c, seeds, episodes=128):
  """Mean greedy evaluation return per seed after jit(vmap(make_train))."""
  p = loop.plan(c)

  def run(key):
    state, metrics = loop.make_train(c)(key)
    returns, _ = p.evaluate(state, jax.random.fold_in(key, 7), episodes)
    return jnp.mean(returns), state, metrics

  out = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(0), seeds))
  return jax.device_get(out)


def test_trpo_step_satisfies_kl_bound():
  net = ActorCritic(3, True, (16,), "tanh", 0)
  init, unravel = base.flat_params(net, jnp.zeros((1, 4)))
  policy = lambda p, o: net.apply({"params": unravel(p)}, o, method=ActorCritic.policy)
  params = init(jax.random.PRNGKey(0))
  obs = jax.random.normal(jax.random.PRNGKey(1), (512, 4))
  actions = policy(params, obs).sample(jax.random.PRNGKey(2))
  adv = jax.random.normal(jax.random.PRNGKey(3), (512,)) + 2.0 * (actions == 1)
  for max_kl in (0.001, 0.01, 0.05):
    new, stats = jax.jit(lambda p: trpo_step(policy, p, obs, actions, adv, max_kl=max_kl))(params)
    # Independent KL(old || new) in numpy from the two policies' log-probabilities.
    lo = np.asarray(policy(params, obs).logits, np.float64)
    ln = np.asarray(policy(new, obs).logits, np.float64)
    kl = np.mean(np.sum(np.exp(lo) * (lo - ln), -1))
    assert float(stats["trpo/accepted"]) == 1.0
    assert 0 < kl <= max_kl * (1 + 1e-4), (max_kl, kl)
    assert kl > 0.2 * max_kl  # a real step, not a timid one
    # The surrogate improved.
    ratio = np.exp(np.asarray(policy(new, obs).log_prob(actions)) -
                   np.asarray(policy(params, obs).log_prob(actions)))
    assert np.mean(ratio * np.asarray(adv)) > np.mean(np.asarray(adv))


def test_ppo_solves_cartpole_3_of_3_seeds():
  c = base_config("ppo", "CartPole-v1")  # the configs/rl_ppo.py settings: 500k steps
  c.train.total_steps, c.train.log_every, c.train.eval_episodes = 500_000, 100, 0
  returns, _, m = train_and_evaluate(c, seeds=3)
  assert np.all(returns >= 475), returns
  exact_first_minibatch(m)


def exact_first_minibatch(m):
  """On every update's first minibatch the new and old policies are the same network
  on the same data, so the ratio is 1 and the KL 0 up to float32 rounding (the rollout
  and the update evaluate the network at different batch shapes, which may reorder sums
  on some CPUs; stale or wrong old log-probs would be off by orders of magnitude more)."""
  assert np.all(np.asarray(m["ppo/first_minibatch_ratio_dev"]) <= 5e-6)
  assert np.all(np.abs(np.asarray(m["ppo/first_minibatch_kl"])) <= 1e-10)
  assert np.all(np.asarray(m["ppo/approx_kl"]) > 0.0)  # later minibatches do move the policy


def test_trpo_reaches_195():
  returns, _, metrics = train_and_evaluate(cfg("trpo", steps=61_440), seeds=3)
  assert np.all(returns >= 195), returns
  assert np.all(metrics["trpo/kl"] <= 0.01 * (1 + 1e-4))


def test_reinforce_reaches_195():
  returns, _, _ = train_and_evaluate(cfg("reinforce", steps=153_600, log_every=50), seeds=3)
  assert np.all(returns >= 195), returns


def test_ppo_adaptive_kl_coefficient_adapts():
  c = cfg("ppo", steps=51_200, log_every=10, objective="kl", kl_target=0.01)
  returns, _, m = train_and_evaluate(c, seeds=1, episodes=32)
  betas = np.asarray(m["ppo/kl_beta"]).ravel()
  assert len(set(np.round(betas, 6))) > 1  # beta moved
  assert returns[0] > 100, returns  # and the agent learns
  exact_first_minibatch(m)


def test_dqn_learns_cartpole():
  c = cfg("dqn", steps=100_000, log_every=1250)
  returns, _, _ = train_and_evaluate(c, seeds=1, episodes=64)
  assert returns[0] >= 100, returns  # random play scores ~22, always-one-side ~9


# --- Q-learning vs value iteration ------------------------------------------------------
GRID = ["SFFF", "FHFH", "FFFH", "HFFG"]
MOVES = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}  # left, down, right, up


def frozen_lake_model():
  """[16, 4, 16] transition probabilities of slippery FrozenLake, written independently."""
  T = np.zeros((16, 4, 16))
  for s in range(16):
    r, c = divmod(s, 4)
    if GRID[r][c] in "HG":
      T[s, :, s] = 1.0
      continue
    for a in range(4):
      for b in ((a - 1) % 4, a, (a + 1) % 4):
        nr, nc = min(max(r + MOVES[b][0], 0), 3), min(max(c + MOVES[b][1], 0), 3)
        T[s, a, nr * 4 + nc] += 1 / 3
  return T


def success_probability(T, policy=None, horizon=100):
  """P(reach G within `horizon` steps) from S; policy=None -> the optimal (value iteration)."""
  flat = "".join(GRID)
  goal = np.array([ch == "G" for ch in flat], float)
  terminal = np.array([ch in "HG" for ch in flat])
  v = goal.copy()
  for _ in range(horizon):
    q = T @ v  # [16, 4]
    nv = q.max(1) if policy is None else q[np.arange(16), policy]
    nv[terminal] = goal[terminal]
    v = nv
  return v[0]


def test_qlearning_frozen_lake_near_optimal():
  T = frozen_lake_model()
  optimal = success_probability(T)
  assert optimal == pytest.approx(0.744, abs=0.001)  # the known value for 100 steps
  c = cfg("qlearning", env="FrozenLake-v1", steps=200_000, log_every=2500)
  rates, state, _ = train_and_evaluate(c, seeds=3, episodes=4000)
  for seed in range(3):
    greedy = np.asarray(state.q[seed]).argmax(1)
    assert success_probability(T, greedy) >= optimal - 0.05
    # The environment's own Monte Carlo success rate agrees (4000 episodes: se ~0.007).
    assert rates[seed] >= optimal - 0.05, rates


def test_reinforce_bandit_finds_best_arm():
  c = cfg("reinforce", env="Bandit-v0", steps=20_480, num_envs=8, num_steps=16)
  p = loop.plan(c)
  state, _ = jax.jit(loop.make_train(c))(jax.random.PRNGKey(0))
  actions = jax.jit(lambda s, k: p.algo.act(s, jnp.zeros((64, 1)), k, False))(
      state, jax.random.PRNGKey(1))
  assert np.mean(np.asarray(actions) == 3) > 0.8  # arm 3 has the highest mean (0.9)


def test_chunked_runs_equal_one_jitted_run():
  c = cfg("qlearning", env="FrozenLake-v1", steps=16 * 60, log_every=20)
  c.train.eval_episodes = 8
  p = loop.plan(c)
  whole_state, whole = jax.jit(loop.make_train(c))(jax.random.PRNGKey(3))
  state = jax.jit(p.algo.init)(jax.random.PRNGKey(3))
  chunk = jax.jit(lambda s: p.run_chunk(s, p.chunk))
  parts = []
  for _ in range(p.num_chunks):
    state, m = chunk(state)
    parts.append(m)
  assert p.remainder == 0
  np.testing.assert_array_equal(whole_state.q, state.q)
  np.testing.assert_array_equal(whole["eval/return"], [m["eval/return"] for m in parts])


def test_continuous_actions_policy_gradient_runs_and_dqn_refuses():
  pytest.importorskip("gymnax")
  # Pendulum-v1's reward, from the observation (cos θ, sin θ, θ') and the torque u:
  # -(θ^2 + 0.1 θ'^2 + 0.001 clip(u, -2, 2)^2), θ in [-π, π], |θ'| <= 8: in [-16.2736, 0].
  env = envs.make("Pendulum-v1")
  p = env.default_params
  obs, s = env.reset(jax.random.PRNGKey(0), p)
  for i, u in enumerate([3.0, -0.5, -7.0, 1.25]):
    want = -(np.arctan2(obs[1], obs[0]) ** 2 + 0.1 * obs[2] ** 2 + 0.001 * np.clip(u, -2, 2) ** 2)
    obs, s, r, term, trunc, _ = env.step(jax.random.PRNGKey(i), s, jnp.array([u]), p)
    np.testing.assert_allclose(float(r), want, rtol=1e-5)
    assert not bool(term) and not bool(trunc)
  floor = -(np.pi ** 2 + 0.1 * 8.0 ** 2 + 0.001 * 2.0 ** 2)
  c = cfg("reinforce", env="Pendulum-v1", steps=2048, num_envs=4, num_steps=64)
  _, m = jax.jit(loop.make_train(c))(jax.random.PRNGKey(0))
  # 4 envs x 512 steps, 200-step episodes (truncated, never terminated): 2 finish per env.
  assert float(np.sum(m["sum/episodes"])) == 4 * (512 // 200)
  assert float(np.sum(m["sum/episode_length"])) == 4 * (512 // 200) * 200
  per_step = float(np.sum(m["sum/episode_return"])) / float(np.sum(m["sum/episode_length"]))
  assert floor < per_step < 0.0
  with pytest.raises(ConfigError, match="needs discrete actions"):
    loop.plan(cfg("dqn", env="Pendulum-v1"))


@pytest.mark.parametrize("algo,env,kw,needle", [
    ("ppo", "CartPole-v1", {"minibatches": 3}, "minibatches=3 does not divide"),
    ("ppo", "CartPol-v1", {}, "Did you mean: CartPole-v1"),
    ("qlearning", "CartPole-v1", {}, "needs discrete observations"),
    ("ppo", "CartPole-v1", {"objective": "klx"}, "'kl'"),
    ("trpo", "CartPole-v1", {"minibatches": 7}, "does not divide"),
])
def test_bad_configs_raise_config_error(algo, env, kw, needle):
  with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
    loop.plan(cfg(algo, env=env, **kw))
