"""Classic RL in pure JAX (PPO, TRPO, REINFORCE, DQN, Q-learning): see configs/rl_*.py."""

import json
import logging
import os

from experiments import launch


def main(config, workdir):
  from llmrl.rl import loop, runner
  loop.plan(config)  # a bad config fails here, in one line, before anything compiles
  from llmrl.config import config_to_dict
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
  result = runner.run(config, workdir)
  final = result.get("final_eval", {})
  logging.getLogger("llmrl").info(
      "done: %d env steps per seed in %.1fs (%.0f env steps/s over %d seed(s)); "
      "final mean return %s; results in %s/results.json",
      result["env_steps_per_seed"], result["train_wall_s"], result["env_steps_per_s"],
      result["num_seeds"], f"{final['mean_return']:.2f}" if final else "n/a", workdir)


if __name__ == "__main__":
  launch.run(main)
