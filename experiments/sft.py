"""The sft stage of the ChatGPT recipe: see configs/sft.py for commands."""

from experiments import launch


def main(config, workdir):
  from llmrl.rlhf import pipeline
  pipeline.sft(config, workdir)


if __name__ == "__main__":
  launch.run(main)
