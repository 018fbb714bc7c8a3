"""Pretrain BERT (masked LM + next-sentence prediction): see configs/pretrain_bert.py for commands."""

import logging

from experiments import launch


def main(config, workdir):
  from llmrl.tasks import bert
  from llmrl.config import write_config
  from llmrl.train import mesh as mesh_lib
  from llmrl.train import trainer

  mesh = mesh_lib.make_mesh(config.mesh)  # fails fast on a bad mesh
  trainer.validate(config.train, mesh)
  bert.validate(config)
  write_config(config, workdir)
  task, model, _ = bert.make_task(config, workdir)
  log = logging.getLogger("llmrl")
  log.info(bert.describe(model))
  final = trainer.train(config, workdir, task, mesh=mesh).metrics
  log.info("final: %s", {k: round(v, 4) for k, v in final.items()})


if __name__ == "__main__":
  launch.run(main)
