"""PPO's actor and critic updates: joint, separate (per-network clip), and parallel
(the two networks' epochs on two devices at once), and the two-device helper.

References: the same functions run on one device (parallel must equal it bit
for bit), the joint update when clipping is off (the same gradients), and a
property only per-network clipping has (the actor's steps do not depend on the
critic's loss scale once its gradient is clipped).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.config import ConfigError
from llmrl.rl import loop, parallel, rollout, runner
from llmrl.rl.algos import base
from llmrl.rl.config import base_config
from llmrl.rl.networks import ActorCritic


def ppo_cfg(update, env="CartPole-v1", **algo_kw):
  c = base_config("ppo", env)
  c.algo.num_envs, c.algo.num_steps = 4, 32
  c.algo.epochs, c.algo.minibatches = 2, 4
  c.algo.actor_critic_update = update
  for k, v in algo_kw.items():
    c.algo[k] = v
  c.train.total_steps, c.train.log_every, c.train.eval_episodes = 128 * 6, 3, 8
  return c


def train(c, seeds=2):
  """(final state, metrics) of `seeds` vmapped runs."""
  keys = jax.random.split(jax.random.PRNGKey(0), seeds)
  return jax.device_get(jax.jit(jax.vmap(loop.make_train(c)))(keys))


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_on_two_devices_equals_one_device_and_uses_two():
  def loop_fn(scale):
    def f(w, x):  # a loop of small matmuls, like a minibatch epoch
      return jax.lax.fori_loop(0, 50, lambda i, w: w - 1e-3 * x.T @ jnp.tanh(x @ w * scale), w)
    return f

  def fb(w, x):  # other shapes and dtypes; the integers beyond float32's 2^24
    return {"sum": loop_fn(2.0)(w, x).sum(0), "n": jnp.int32(2**24 + 1),
            "flags": x[:3, 0] > 0, "half": x[:2, :2].astype(jnp.bfloat16),
            "u8": jnp.arange(250, 256, dtype=jnp.uint8)}

  fa = loop_fn(1.0)
  w, x = jnp.full((8, 8), 0.1), jnp.linspace(-1, 1, 24 * 8).reshape(24, 8)
  both = parallel.on_two_devices(fa, fb)
  a, b = jax.jit(both)(w, x)
  np.testing.assert_array_equal(a, jax.jit(fa)(w, x))
  want = jax.jit(fb)(w, x)
  for k in want:
    assert b[k].dtype == want[k].dtype and b[k].shape == want[k].shape, k
    np.testing.assert_array_equal(b[k], want[k], err_msg=k)
  assert int(b["n"]) == 2**24 + 1
  assert len(a.sharding.device_set) == 2  # the results come back on both devices
  # under vmap (seeds), each example as on its own
  ws = jnp.stack([w, 2 * w])
  va, vb = jax.jit(jax.vmap(both, in_axes=(0, None)))(ws, x)
  np.testing.assert_array_equal(va[1], jax.jit(fa)(2 * w, x))
  np.testing.assert_array_equal(vb["sum"][1], jax.jit(fb)(2 * w, x)["sum"])
  # one program over two partitions, each running one branch of a conditional
  hlo = jax.jit(both).lower(w, x).compile().as_text()
  assert "num_partitions=2" in hlo and "conditional(" in hlo
  with pytest.raises(ValueError, match="device_count=2"):
    parallel.on_two_devices(fa, fb, devices=jax.local_devices()[:1])


def test_packed_results_keep_every_bit_of_64_bit_values():
  with jax.enable_x64(True):
    tree = {"f": jnp.array([1.5, -2.25e300], jnp.float64), "i": jnp.array([2**40 + 3]),
            "b": jnp.array([True, False])}
    back = parallel._unpack(parallel._pack(tree), jax.eval_shape(lambda: tree))
    for k in tree:
      assert back[k].dtype == tree[k].dtype, k
      np.testing.assert_array_equal(back[k], tree[k], err_msg=k)


@pytest.mark.parametrize("objective", ["clip", "kl"])
def test_parallel_equals_separate_bit_for_bit(objective):
  sep_state, sep_m = train(ppo_cfg("separate", objective=objective))
  par_state, par_m = train(ppo_cfg("parallel", objective=objective))
  assert leaves_equal(sep_state.params, par_state.params)
  assert leaves_equal(sep_state.opt_state, par_state.opt_state)
  assert sep_m.keys() == par_m.keys()
  # The logged metrics are reductions that XLA may fuse differently in the two programs:
  # on some CPUs a few (entropy, KL, mean ratio) differ by an ulp while every parameter
  # and optimizer state stays bitwise equal, so they are compared to float32 rounding.
  for k in sep_m:
    np.testing.assert_allclose(sep_m[k], par_m[k], rtol=1e-6, atol=1e-12, err_msg=k)
  assert np.all(np.asarray(sep_m["ppo/first_minibatch_ratio_dev"]) <= 5e-6)
  assert np.all(np.asarray(sep_m["ppo/first_minibatch_kl"]) == 0)
  # the two seeds trained differently (the vmapped axis is not mixed up)
  assert not np.array_equal(sep_state.params[0][0], sep_state.params[0][1])


def test_separate_equals_joint_when_nothing_is_clipped():
  joint_state, joint_m = train(ppo_cfg("joint", max_grad_norm=0.0))
  sep_state, sep_m = train(ppo_cfg("separate", max_grad_norm=0.0))
  p = loop.plan(ppo_cfg("joint"))
  net = ActorCritic(2)
  _, unravel_joint = base.flat_params(net, jnp.zeros((1, 4)))
  _, unravel_sep = base.flat_param_groups(net, jnp.zeros((1, 4)),
                                          (("actor", "log_std"), ("critic",)))
  for seed in range(2):
    joint = unravel_joint(joint_state.params[seed])
    sep = unravel_sep(tuple(v[seed] for v in sep_state.params))
    for a, b in zip(jax.tree.leaves(joint), jax.tree.leaves(sep)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for k in ("loss/total", "loss/policy", "loss/value", "learning/grad_norm", "ppo/approx_kl"):
    np.testing.assert_allclose(joint_m[k], sep_m[k], rtol=1e-4, atol=1e-7, err_msg=k)
  assert p.algo.steps_per_update == 128


@pytest.mark.parametrize("update", ["joint", "separate"])
def test_clipping_scope(update):
  """Per-network clipping: in an update (same rollout, same advantages) the actor's
  eight steps ignore the critic's loss scale."""
  def one_update(vf_coef):
    c = ppo_cfg(update, max_grad_norm=0.05, vf_coef=vf_coef)
    c.train.total_steps, c.train.log_every = 128, 1
    return train(c, seeds=1)[0].params

  small, big = one_update(0.5), one_update(5.0)
  if update == "joint":  # one clip over both: a bigger value loss shrinks the actor's step
    assert not np.array_equal(small, big)
  else:
    np.testing.assert_array_equal(small[0], big[0])  # actor
    assert not np.array_equal(small[1], big[1])      # critic


@pytest.mark.parametrize("env,greedy", [("CartPole-v1", False), ("CartPole-v1", True),
                                        ("FrozenLake-v1", False)])  # slippery: env keys matter
def test_evaluation_parts_concatenate_to_the_whole(env, greedy):
  """What the parallel mode's evaluation relies on: each device runs a slice of the episodes."""
  p = loop.plan(ppo_cfg("separate", env=env))
  state = jax.jit(p.algo.init)(jax.random.PRNGKey(1))
  key = jax.random.PRNGKey(2)
  if greedy:
    act, noise = lambda obs, k: p.algo.act(state, obs, k, True), None
  else:
    act = lambda obs, nz: p.algo.act(state, obs, None, False, noise=nz)
    noise = lambda obs, k, n: jax.eval_shape(p.algo.policy, state, obs).noise(k, (n,))
  run = jax.jit(lambda part: rollout.evaluate(p.env, p.env_params, act, key, 7, noise=noise,
                                              part=part), static_argnums=0)
  whole = run((0, 1))
  assert len(set(np.asarray(whole[1]).tolist())) > 2  # episodes differ: randomness matters
  for n in (2, 3):
    parts = [run((i, n)) for i in range(n)]
    for j in range(2):  # returns, lengths
      np.testing.assert_array_equal(np.concatenate([q[j] for q in parts]), whole[j])
  with pytest.raises(ValueError, match=r"part=\(2, 2\)"):
    run((2, 2))


def test_flat_param_groups_round_trip_continuous_actions():
  net = ActorCritic(2, discrete=False)
  obs = jnp.zeros((1, 3))
  init, unravel = base.flat_param_groups(net, obs, (("actor", "log_std"), ("critic",)))
  flats = init(jax.random.PRNGKey(0))
  want = net.init(jax.random.PRNGKey(0), obs)["params"]
  assert leaves_equal(unravel(flats), want) and sorted(unravel(flats)) == sorted(want)
  assert flats[0].size == sum(x.size for k in ("actor", "log_std")
                              for x in jax.tree.leaves(want[k]))
  assert sorted(unravel((None, flats[1]))) == ["critic"]
  with pytest.raises(ValueError, match="log_std"):
    base.flat_param_groups(net, obs, (("actor",), ("critic",)))


def test_parallel_needs_two_devices(monkeypatch):
  monkeypatch.setattr(jax, "local_devices", lambda *a, **k: jax.devices()[:1])
  with pytest.raises(ConfigError, match="xla_force_host_platform_device_count=2"):
    loop.plan(ppo_cfg("parallel"))
  with pytest.raises(ConfigError, match="'separate'"):
    loop.plan(ppo_cfg("together"))


def test_parallel_run_resumes_to_the_same_numbers(tmp_path):
  """The runner places the state where the two-device program wants it, also after a restore."""
  c = ppo_cfg("parallel")
  c.num_seeds = 2
  c.train.log_every, c.train.checkpoint_every, c.train.plot = 2, 1, False
  c.train.final_eval_episodes = 8
  whole = runner.run(c, str(tmp_path / "whole"), verbose=False)
  assert runner.run(c, str(tmp_path / "cut"), verbose=False, stop_after_chunks=2) == {"stopped": 2}
  resumed = runner.run(c, str(tmp_path / "cut"), verbose=False)
  assert leaves_equal(jax.device_get(whole["state"].params),
                      jax.device_get(resumed["state"].params))
  assert whole["final_eval"] == resumed["final_eval"]
