"""The whole ChatGPT pipeline with a report: see configs/chatgpt.py."""

import logging
import os
import time

from experiments import launch


def main(config, workdir):
  from llmrl.config import write_config
  from llmrl.report import chatgpt as report
  from llmrl.rlhf import evaluate, pipeline
  from llmrl.train.metrics import format_duration
  log = logging.getLogger("llmrl")
  stages = ("pretrain", "sft", "reward_model", "rlhf")
  dirs = {s: os.path.join(workdir, s) for s in stages}
  with config.unlocked():
    if config.cache_dir:
      for s in stages:
        config[s].data.cache_dir = config.cache_dir
    for s in stages:
      config[s].seed = config.seed
    config.sft.init_from = dirs["pretrain"]
    config.reward_model.init_from = dirs["sft"]
    config.rlhf.sft_from, config.rlhf.rm_from = dirs["sft"], dirs["reward_model"]
  write_config(config, workdir)
  t0, results = time.time(), {}
  for i, stage in enumerate(stages):
    elapsed = time.time() - t0
    eta = elapsed / i * (len(stages) - i) if i else float("nan")
    log.info("stage %d/%d: %s (elapsed %s, ETA %s)", i + 1, len(stages), stage,
             format_duration(elapsed), format_duration(eta))
    results[stage] = getattr(pipeline, stage)(config[stage], dirs[stage])
  n = config.eval_max_new_tokens
  data = config.rlhf.data
  evals = {"pretrain": pipeline.evaluate_stage(dirs["pretrain"], data, "fewshot", n),
           "sft": pipeline.evaluate_stage(dirs["sft"], data, "chat", n),
           "rlhf": results["rlhf"]["eval"]}
  for name, records in evaluate.baselines(evals["sft"]["records"]).items():
    evals[name] = {**evaluate.summarize(records), "calibration": evaluate.calibration(records)}
  # RLHF minus SFT on the same questions: the interval of the gain itself.
  evals["rlhf"]["minus_sft"] = evaluate.paired_difference(evals["rlhf"]["records"],
                                                          evals["sft"]["records"])
  rm = {k.split("/", 1)[1]: v for k, v in results["reward_model"].items()
        if k.startswith("eval/")}
  out = report.write(workdir, evals, rm, results["rlhf"], results["rlhf"]["kl"],
                     config.rlhf.ppo.kl_target)
  log.info("report: %s (%s total)", os.path.join(workdir, "report.md"),
           format_duration(time.time() - t0))
  log.info("%s", {k: v for k, v in out.items() if k != "calibration"})
  for claim, held in out["targets"].items():
    log.info("target %s: %s", "holds" if held else "NOT MET", claim)


if __name__ == "__main__":
  launch.run(main)
