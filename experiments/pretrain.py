"""Causal-LM pretraining (the first stage of the ChatGPT recipe): see configs/pretrain.py for commands."""

from experiments import launch


def main(config, workdir):
  from llmrl.rlhf import pipeline
  pipeline.pretrain(config, workdir)


if __name__ == "__main__":
  launch.run(main)
