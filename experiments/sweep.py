"""Scaling-law sweep (local runs, or launch commands for a pod) and fits: see configs/sweep.py."""

from experiments import launch


def main(config, workdir):
  from llmrl.scaling import experiment
  experiment.run_sweep(config, workdir)


if __name__ == "__main__":
  launch.run(main)
