r"""PPO on CartPole-v1: llmrl vs rejax (pure JAX) vs stable-baselines3 (PyTorch), one script.

    pip install rejax==0.1.3 stable-baselines3==2.9.2 "gymnasium<1.4"   # benchmark-only peers
    python benchmarks/rl_ppo_cartpole.py [--seeds 3] [--skip-sb3] [--update parallel]

Equal settings: rejax's CartPole PPO config (5 envs x 100 steps, 5 epochs x 5
minibatches, lr 7.5e-4, clip 0.2, GAE 0.95, entropy 0.01, grad-norm 0.5, tanh
64x64 actor and critic, 100k environment steps) for all three. llmrl steps the
actor and the critic as rejax does, each with its own loss, gradient clip and
Adam step (`actor_critic_update="separate"`); by default it runs the two
networks' epochs on two CPU devices at once ("parallel": the same numbers, two
cores; the script asks XLA for two CPU devices before jax starts, which leaves
rejax, on the first device, as it is). `--update separate` or `joint` (one loss
and one clip over both networks, as sb3) measures the one-device modes.
Equal evaluation schedules: llmrl and rejax both evaluate 128 sampled-action
episodes every 10k steps inside the jitted run (rejax's initial evaluation is
skipped). "Train only" runs evaluate once, after the last update: rejax with
eval_freq=TOTAL always does, so llmrl does too. sb3 cannot evaluate inside
training at a comparable cost, so it is compared on training throughput with
no evaluation in its timing (llmrl's train-only time keeps its one final
evaluation), and its return is a final 128-episode evaluation.
Figures: environment steps per second (compiled, after a warm-up run), wall
time to solve (first evaluation with mean return >= 475, estimated from the
evaluation's position in the run), final mean return; and llmrl's seeds
trained three ways: one after another in one process, vmapped in one
program, and as one process per seed running side by side (each compiles and
warms up first, then all start together; the wall time covers the train-only
run).

rejax 0.1.3 unpacks gymnax's pre-1.0 5-tuple `step`; gymnax 1.x returns
(obs, state, reward, terminated, truncated, info), so rejax gets a CartPole
subclass folding the two flags into `done` (exactly old gymnax's semantics).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=2").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llmrl.rl import loop  # noqa: E402

TOTAL = 100_000
EVAL_EVERY = 10_000
EVAL_EPISODES = 128
SOLVED = 475.0


def llmrl_config(evaluate: bool, update: str):
  """configs/rl_ppo.py:rejax with actor_critic_update=`update`, built here so the
  script needs only the installed package.

  evaluate=False still evaluates once, after the last update: rejax with
  eval_freq=TOTAL does the same, so "train only" compares equal schedules too.
  """
  from llmrl.rl.config import base_config
  c = base_config("ppo", "CartPole-v1")
  c.algo.num_envs, c.algo.num_steps = 5, 100
  c.algo.epochs, c.algo.minibatches = 5, 5
  c.algo.learning_rate, c.algo.anneal_lr = 7.5e-4, False
  c.train.total_steps = TOTAL
  every = EVAL_EVERY if evaluate else TOTAL
  c.train.log_every = every // 500         # updates of 500 steps between evaluations
  c.train.eval_episodes = EVAL_EPISODES
  c.train.eval_greedy = False              # rejax evaluates the sampled policy
  c.algo.actor_critic_update = update
  return c


def timed(fn, keys):
  """(seconds, output) of fn over each key, compiled and warmed up first."""
  jax.block_until_ready(fn(keys[0]))
  times, outs = [], []
  for k in keys:
    t = time.perf_counter()
    out = jax.block_until_ready(fn(k))
    times.append(time.perf_counter() - t)
    outs.append(out)
  return times, outs


def solve_time(curve, wall):
  """Wall time at the first evaluation >= SOLVED (uniform-rate estimate) or inf."""
  curve = np.asarray(curve)
  hit = np.nonzero(curve >= SOLVED)[0]
  return wall * (hit[0] + 1) / len(curve) if len(hit) else float("inf")


def bench_llmrl(seeds: int, evaluate: bool, update: str):
  c = llmrl_config(evaluate, update)
  train = jax.jit(loop.make_train(c))
  keys = [jax.random.PRNGKey(s) for s in range(seeds)]
  times, outs = timed(train, keys)
  curves = [np.asarray(m["eval/return"]) for _, m in outs]
  return {"times": times, "curves": curves, "final": [float(cv[-1]) for cv in curves]}


def bench_llmrl_vmap(seeds: int, update: str):
  c = llmrl_config(False, update)
  train = jax.jit(jax.vmap(loop.make_train(c)))
  keys = jax.random.split(jax.random.PRNGKey(0), seeds)
  jax.block_until_ready(train(keys))
  t = time.perf_counter()
  jax.block_until_ready(train(keys))
  return time.perf_counter() - t


def worker(seed: int, update: str):
  """One side-by-side process: compile and warm up, say "ready", train on "go", print seconds."""
  train = jax.jit(loop.make_train(llmrl_config(False, update)))
  key = jax.random.PRNGKey(seed)
  jax.block_until_ready(train(key))
  print("ready", flush=True)
  sys.stdin.readline()
  t = time.perf_counter()
  jax.block_until_ready(train(key))
  print(f"done {time.perf_counter() - t}", flush=True)


def bench_llmrl_processes(seeds: int, update: str):
  """(wall s from the common start until every process finished, [each process's own s])."""
  procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(s), "--update", update],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
           for s in range(seeds)]

  def expect(p, word: str) -> str:
    line = p.stdout.readline()
    if not line.startswith(word):
      for q in procs:
        q.kill()
      raise RuntimeError(f"worker process {p.args[-1]} exited with {p.wait()} instead of saying "
                         f"{word!r}; run `{' '.join(p.args)}` to see its error")
    return line

  for p in procs:
    expect(p, "ready")
  t = time.perf_counter()
  for p in procs:
    p.stdin.write("go\n")
    p.stdin.flush()
  own = [float(expect(p, "done").split()[1]) for p in procs]
  wall = time.perf_counter() - t
  for p in procs:
    p.wait()
  return wall, own


def rejax_algo(evaluate: bool):
  from gymnax.environments.classic_control.cartpole import CartPole
  from rejax import PPO

  class OldStepCartPole(CartPole):
    def step(self, key, state, action, params=None):
      obs, state, reward, term, trunc, info = super().step(key, state, action, params)
      return obs, state, reward, jnp.logical_or(term, trunc), info

  env = OldStepCartPole()
  return PPO.create(
      env=env, env_params=env.default_params, agent_kwargs={"activation": "tanh"},
      num_envs=5, num_steps=100, num_epochs=5, num_minibatches=5, learning_rate=7.5e-4,
      max_grad_norm=0.5, total_timesteps=TOTAL, gamma=0.99, gae_lambda=0.95, clip_eps=0.2,
      ent_coef=0.01, vf_coef=0.5, skip_initial_evaluation=True,
      eval_freq=EVAL_EVERY if evaluate else TOTAL)


def bench_rejax(seeds: int, evaluate: bool):
  algo = rejax_algo(evaluate)
  train = jax.jit(algo.train)
  keys = [jax.random.PRNGKey(s) for s in range(seeds)]
  times, outs = timed(train, keys)
  res = {"times": times}
  # evaluation: (lengths, returns) each [num_evals, 128]; with eval off there is one at the end
  finals = [float(np.asarray(ev[1])[-1].mean()) for _, ev in outs]
  res["final"] = finals
  if evaluate:
    res["curves"] = [np.asarray(ev[1]).mean(-1) for _, ev in outs]
  return res


def bench_sb3(seed: int = 0):
  import gymnasium as gym
  import torch
  from stable_baselines3 import PPO
  from stable_baselines3.common.env_util import make_vec_env
  from stable_baselines3.common.evaluation import evaluate_policy
  env = make_vec_env("CartPole-v1", n_envs=5, seed=seed)
  model = PPO("MlpPolicy", env, n_steps=100, batch_size=100, n_epochs=5, learning_rate=7.5e-4,
              gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.01, vf_coef=0.5,
              max_grad_norm=0.5, policy_kwargs={"activation_fn": torch.nn.Tanh,
                                                "net_arch": {"pi": [64, 64], "vf": [64, 64]}},
              seed=seed, device="cpu", verbose=0)
  t = time.perf_counter()
  model.learn(total_timesteps=TOTAL)
  wall = time.perf_counter() - t
  mean, _ = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=EVAL_EPISODES,
                            deterministic=False)
  return wall, float(mean)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--skip-sb3", action="store_true")
  ap.add_argument("--update", default="parallel", choices=["parallel", "separate", "joint"],
                  help="llmrl's config.algo.actor_critic_update")
  ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker is not None:
    return worker(args.worker, args.update)
  n = args.seeds
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{TOTAL} env steps per run, {n} seeds; llmrl actor_critic_update={args.update}")

  rows = {}
  # Interleave the two JAX libraries so machine load affects both alike.
  ours_ev, rej_ev = bench_llmrl(n, True, args.update), bench_rejax(n, True)
  ours_tr, rej_tr = bench_llmrl(n, False, args.update), bench_rejax(n, False)
  for name, ev, tr, finals in (
      ("llmrl", ours_ev, ours_tr, [float(c[-1]) for c in ours_ev["curves"]]),
      ("rejax", rej_ev, rej_tr, [float(c[-1]) for c in rej_ev["curves"]])):
    wall = statistics.median(ev["times"])
    rows[name] = {
        "steps_per_s_with_eval": TOTAL / wall,
        "steps_per_s_train_only": TOTAL / statistics.median(tr["times"]),
        "solve_s": [solve_time(c, t) for c, t in zip(ev["curves"], ev["times"])],
        "final_return": finals}
  rows["llmrl"]["final_return_no_eval_run"] = ours_tr["final"]
  rows["rejax"]["final_return_no_eval_run"] = rej_tr["final"]
  if not args.skip_sb3:
    try:
      wall, ret = bench_sb3()
      rows["sb3"] = {"steps_per_s_train_only": TOTAL / wall, "final_return": [ret],
                     "wall_s": wall}
    except ImportError as e:
      print(f"stable-baselines3 not available ({e}); skipping it")

  print("\n| library | env steps/s (eval every 10k) | env steps/s (train only) | "
        "time to solve (s, per seed) | final return (per seed) |")
  print("|---|---|---|---|---|")
  for name, r in rows.items():
    ev = f"{r['steps_per_s_with_eval']:,.0f}" if "steps_per_s_with_eval" in r else "-"
    solve = ", ".join(f"{s:.2f}" for s in r.get("solve_s", [])) or "-"
    fin = ", ".join(f"{x:.1f}" for x in r["final_return"])
    print(f"| {name} | {ev} | {r['steps_per_s_train_only']:,.0f} | {solve} | {fin} |")
  o, j = rows["llmrl"], rows["rejax"]
  print(f"\nllmrl / rejax steps/s: {o['steps_per_s_with_eval'] / j['steps_per_s_with_eval']:.2f}x "
        f"with evaluation, {o['steps_per_s_train_only'] / j['steps_per_s_train_only']:.2f}x "
        "train only (target >= 1.2x)")
  print(f"final return, mean over seeds: llmrl {np.mean(o['final_return']):.1f} vs rejax "
        f"{np.mean(j['final_return']):.1f} (evaluated every 10k); without intermediate "
        f"evaluation llmrl {np.mean(o['final_return_no_eval_run']):.1f} vs rejax "
        f"{np.mean(j['final_return_no_eval_run']):.1f}")
  if "sb3" in rows:
    s = rows["sb3"]
    print(f"llmrl / sb3 steps/s (train only): "
          f"{o['steps_per_s_train_only'] / s['steps_per_s_train_only']:.1f}x (target >= 30x); "
          f"sb3 final return {s['final_return'][0]:.1f}")
  seq = sum(ours_tr["times"])
  vm = bench_llmrl_vmap(n, args.update)
  side, own = bench_llmrl_processes(n, args.update)
  print(f"\nllmrl {n} seeds, train only: one after another {seq:.2f}s ({n * TOTAL / seq:,.0f} "
        f"steps/s); vmapped {vm:.2f}s ({n * TOTAL / vm:,.0f} steps/s, {seq / vm:.2f}x); "
        f"{n} processes side by side {side:.2f}s ({n * TOTAL / side:,.0f} steps/s, "
        f"{seq / side:.2f}x; each process {', '.join(f'{x:.2f}' for x in own)}s); "
        f"processes over vmapped {vm / side:.2f}x")


if __name__ == "__main__":
  main()
