"""The `sweep` experiment: plan, run (local) or print launch commands (pod), then fit and plot."""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections

from llmrl.scaling import analysis, plots, sweep

log = logging.getLogger("llmrl")


def fit_and_plot(config: ml_collections.ConfigDict, workdir: str, rows: list[dict]) -> dict:
  """Fits the results table, writes fits.json, summary.md and the PNGs; returns the fits."""
  fits, extras = analysis.analyse(rows, workdir, config.sweep.fit_loss, config.sweep.bootstrap)
  fits["plots"] = plots.write_all(fits, extras, workdir) if fits["num_runs"] else []
  with open(os.path.join(workdir, "fits.json"), "w") as f:
    json.dump(fits, f, indent=2)
  lines = analysis.summary_lines(fits)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write("# Scaling sweep\n\n" + "\n".join(f"- {x}" for x in lines) + "\n")
  for line in lines:
    log.info("sweep: %s", line)
  return fits


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config.sweep.mode` on `workdir`; returns {"rows", "fits"} or {"commands"}."""
  from llmrl import data as data_lib
  sweep.validate(config.sweep)
  data_lib.validate_config(config.pretrain.data)
  vocab = data_lib.get_tokenizer(config.pretrain.data).vocab_size
  runs = sweep.plan(config, vocab)
  log.info("sweep: %d runs planned (%s mode) in %s", len(runs), config.sweep.mode, workdir)
  os.makedirs(workdir, exist_ok=True)
  if config.sweep.mode == "pod":
    commands = sweep.pod_commands(config, workdir, runs)
    path = os.path.join(workdir, "commands.sh")
    with open(path, "w") as f:
      f.write("".join(c + "\n" for c in commands))
    for c in commands:
      print(c, flush=True)
    log.info("sweep: %d launch commands written to %s; when they finish, run again with "
             "--config.sweep.mode=fit", len(commands), path)
    return {"commands": commands}
  if config.sweep.mode == "local":
    rows = sweep.run_local(config, workdir, runs)
  else:
    rows = sweep.collect(config, workdir, runs)
  fits = fit_and_plot(config, workdir, rows) if jax.process_index() == 0 else {}
  return {"rows": rows, "fits": fits}
