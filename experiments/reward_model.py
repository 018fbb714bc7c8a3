"""Train a reward model on ranked responses: see configs/reward_model.py."""

import json
import logging
import os

import jax
import numpy as np

from experiments import launch


def main(config, workdir):
  from llmrl.rlhf import reward
  from llmrl.tasks import lm
  from llmrl.train import mesh as mesh_lib
  from llmrl.train import trainer
  from llmrl.train.metrics import MetricWriter
  mesh = mesh_lib.make_mesh(config.mesh)
  trainer.validate(config.train, mesh)
  task, model, _, heldout = reward.make_task(config, workdir)
  launch.write_config(config, workdir)
  log = logging.getLogger("llmrl")
  log.info(lm.describe(model.backbone if hasattr(model, "backbone") else model))
  result = trainer.train(config, workdir, task, mesh=mesh)
  rewards = jax.jit(reward.make_rewards_fn(model))(
      jax.device_get(result.state.params), {k: heldout[k] for k in ("inputs", "segment_ids", "last")})
  acc = reward.pairwise_accuracy(np.asarray(rewards), heldout["scores"])
  log.info("reward_model.heldout_accuracy = %.3f over %d held-out prompts", acc,
           len(heldout["scores"]))
  if jax.process_index() == 0:
    writer = MetricWriter(workdir)
    writer.write(result.metrics["step"], {"eval/heldout_accuracy": acc})
    writer.close()
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump({"reward_model.heldout_accuracy": acc,
                 "heldout_prompts": int(len(heldout["scores"]))}, f, indent=2)


if __name__ == "__main__":
  launch.run(main)
