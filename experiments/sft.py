"""Supervised fine-tuning on chat turns: see configs/sft.py for commands."""

import logging

from experiments import launch


def main(config, workdir):
  from llmrl.rlhf import sft
  from llmrl.tasks import lm
  from llmrl.train import mesh as mesh_lib
  from llmrl.train import trainer
  mesh = mesh_lib.make_mesh(config.mesh)
  trainer.validate(config.train, mesh)
  task, model, _ = sft.make_task(config, workdir)
  launch.write_config(config, workdir)
  log = logging.getLogger("llmrl")
  log.info(lm.describe(model))
  final = trainer.train(config, workdir, task, mesh=mesh).metrics
  log.info("final: %s", {k: round(v, 4) for k, v in final.items()})


if __name__ == "__main__":
  launch.run(main)
