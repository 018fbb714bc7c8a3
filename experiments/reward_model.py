"""The reward_model stage of the ChatGPT recipe: see configs/reward_model.py for commands."""

from experiments import launch


def main(config, workdir):
  from llmrl.rlhf import pipeline
  pipeline.reward_model(config, workdir)


if __name__ == "__main__":
  launch.run(main)
