"""Classic RL in pure JAX: environments, the shared PPO core, algorithms, the scanned loop.

  envs/        functional environments (CartPole, FrozenLake, bandit, gymnax adapter, wrappers)
  ppo_core     PPO building blocks shared with RLHF (pure functions over [batch, time] + masks)
  algos/       ppo (clip / adaptive KL), trpo, reinforce, dqn, qlearning
  loop         make_train(config) -> train(key) -> (final_state, metrics), jit+vmap-able
  runner       host side of `python -m experiments.rl`: progress, metrics, plots, results
"""
