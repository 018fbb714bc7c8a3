"""Full SFT vs LoRA vs prompt tuning on the embedded data: see configs/peft_compare.py."""

from experiments import launch


def main(config, workdir):
  from llmrl.adapters import compare
  compare.run(config, workdir)


if __name__ == "__main__":
  launch.run(main)
