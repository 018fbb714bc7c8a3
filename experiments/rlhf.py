"""The rlhf stage of the ChatGPT recipe: see configs/rlhf.py for commands."""

from experiments import launch


def main(config, workdir):
  from llmrl.rlhf import pipeline
  pipeline.rlhf(config, workdir)


if __name__ == "__main__":
  launch.run(main)
