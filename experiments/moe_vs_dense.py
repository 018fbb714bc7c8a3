"""Dense vs mixture-of-experts GPT at equal active parameters: see configs/moe_vs_dense.py."""

import logging

from experiments import launch


def main(config, workdir):
  from llmrl.report import moe
  from llmrl.tasks import lm
  lm.validate_model(config.model, config.train.seq_len)  # bad input fails before training
  report = moe.run(config, workdir)
  logging.getLogger("llmrl").info(
      "held-out loss: dense %.4f, MoE %.4f (MoE - dense = %+.4f); MoE dropped %.1f%% of "
      "assignments; report in %s/report.json", report["dense"]["eval"]["loss"],
      report["moe"]["eval"]["loss"], report["eval_loss_moe_minus_dense"],
      100 * report["moe"]["eval"]["dropped_fraction"], workdir)


if __name__ == "__main__":
  launch.run(main)
