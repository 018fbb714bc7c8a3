"""Pretrain a decoder-only language model: see configs/pretrain.py for commands."""

import logging

from experiments import launch


def main(config, workdir):
  from llmrl.tasks import lm
  from llmrl.train import trainer
  launch.write_config(config, workdir)
  task, model, _ = lm.make_task(config, workdir)
  log = logging.getLogger("llmrl")
  log.info(lm.describe(model))
  final = trainer.train(config, workdir, task)
  log.info("final: %s", {k: round(v, 4) for k, v in final.items()})


if __name__ == "__main__":
  launch.run(main)
