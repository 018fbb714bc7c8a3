"""PPO-RLHF of an SFT policy against a reward model: see configs/rlhf.py."""

import json
import logging
import os

import jax

from experiments import launch


def main(config, workdir):
  from llmrl import data
  from llmrl.rlhf import evaluate, loop
  from llmrl.tasks import lm
  log = logging.getLogger("llmrl")
  final = loop.train_rlhf(config, workdir)
  launch.write_config(config, workdir)
  log.info("final: %s", {k: round(v, 4) for k, v in final.items()})
  stage = lm.load_stage(workdir, params_key="policy")
  from llmrl.models import GPT
  result = evaluate.evaluate(GPT(stage.model_config), stage.params, stage.tokenizer,
                             data.examples(config.data, "eval_known"),
                             data.examples(config.data, "eval_unknown"),
                             max_new_tokens=config.eval_max_new_tokens)
  log.info("eval: true_reward %.3f known_accuracy %.3f hallucination_rate %.3f",
           result["true_reward"], result["known_accuracy"], result["hallucination_rate"])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  launch.run(main)
