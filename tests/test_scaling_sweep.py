"""Scaling sweeps: the plan, pod commands, and one end-to-end run of the `sweep` experiment."""

import ast
import csv
import json
import os

import jax
import numpy as np
import pytest

from configs import sweep as sweep_config
from llmrl.config import ConfigError, config_to_dict, load_config_file
from llmrl.models import GPT
from llmrl.models.accounting import count_params
from llmrl.scaling import sweep
from llmrl.tasks.lm import make_gpt_config
from llmrl.train import optim
from tests import launcher


def _config(**sweep_fields):
  c = sweep_config.get_config("tiny")
  for k, v in sweep_fields.items():
    c.sweep[k] = v
  return c


def test_plan_follows_the_shape_rule_and_isoflop_budget():
  c = _config(widths=(32, 96), depths=(), aspect_ratio=32, head_dim=16, tokens=(),
              isoflops=(1e9,))
  runs = sweep.plan(c, vocab_size=512)
  assert [(r.width, r.depth, r.heads, r.d_ff) for r in runs] == [(32, 1, 2, 128),
                                                                 (96, 3, 6, 384)]
  per_step = c.pretrain.train.global_batch_size * c.pretrain.train.seq_len
  for r in runs:
    # N counted by building the model and counting its parameters.
    m = c.pretrain.model
    m.d_model, m.num_layers, m.num_heads, m.d_ff = r.width, r.depth, r.heads, r.d_ff
    model = GPT(make_gpt_config(m, 512, c.pretrain.train.seq_len))
    shapes = jax.eval_shape(lambda k, model=model: model.init(k, np.zeros((1, 4), np.int32)),
                            jax.random.PRNGKey(0))
    assert r.n_total == count_params(shapes["params"])
    want_d = 1e9 / (6 * r.n_total)            # D = C / 6N, rounded to whole steps
    assert abs(r.tokens - want_d) <= per_step / 2
    assert r.tokens == r.steps * per_step


def test_moe_sweeps_count_active_parameters():
  """For MoE shapes N (and so D = C / 6N) is the active count; every parameter is kept too."""
  c = _config(widths=(32,), depths=(2,), head_dim=16, tokens=(), isoflops=(1e9,))
  c.pretrain.model.moe.update(num_experts=4, experts_per_token=1, every=1)
  (r,) = sweep.plan(c, vocab_size=512)
  m = c.pretrain.model
  m.d_model, m.num_layers, m.num_heads, m.d_ff = r.width, r.depth, r.heads, r.d_ff
  model = GPT(make_gpt_config(m, 512, c.pretrain.train.seq_len))
  shapes = jax.eval_shape(lambda k: model.init(k, np.zeros((1, 4), np.int32)),
                          jax.random.PRNGKey(0))
  params = shapes["params"]
  stored = count_params(params)
  assert r.n_stored == stored
  # Each block's experts (everything under moe/ but the router): 3 of 4 are inactive.
  experts = sum(count_params({k: v for k, v in params[f"layers_{i}"]["moe"].items()
                              if k != "router"}) for i in range(2))
  assert r.n_total == stored - experts * 3 // 4
  per_step = c.pretrain.train.global_batch_size * c.pretrain.train.seq_len
  assert abs(r.tokens - 1e9 / (6 * r.n_total)) <= per_step / 2


def test_each_run_decays_its_cosine_over_its_own_steps():
  c = _config(widths=(16, 48), depths=(1, 1), tokens=(), isoflops=(2e8,))
  for r in sweep.plan(c, vocab_size=512):
    rc = sweep.run_config(c, r)
    assert rc.train.steps == r.steps and rc.model.d_model == r.width
    schedule = optim.make_schedule(rc.optim, rc.train.steps)
    peak, floor = rc.optim.learning_rate, rc.optim.learning_rate * rc.optim.min_lr_ratio
    assert float(schedule(r.steps)) == pytest.approx(floor, rel=1e-5)
    assert float(schedule(rc.optim.warmup_steps)) == pytest.approx(peak, rel=1e-5)
    assert rc.optim.warmup_steps <= max(1, 0.1 * r.steps)


def test_bad_sweep_configs_get_clear_errors():
  with pytest.raises(ConfigError, match="sweep.depths has 1 entries"):
    sweep.plan(_config(widths=(16, 32), depths=(1,)), 512)
  with pytest.raises(ConfigError, match="tokens and config.sweep.isoflops are both empty"):
    sweep.plan(_config(tokens=(), isoflops=()), 512)
  with pytest.raises(ConfigError, match="config.sweep.mode='cluster' is not one of"):
    sweep.plan(_config(mode="cluster"), 512)
  with pytest.raises(ConfigError, match="two runs named"):
    sweep.plan(_config(widths=(16, 16), depths=(1, 1)), 512)


def test_smoothed_final_loss():
  step = np.arange(1, 41) * 10.0
  line = 5.0 - 0.002 * step
  assert sweep.smoothed_final(step, line) == pytest.approx(line[-1])
  noisy = line + np.random.default_rng(0).normal(0, 0.05, 40)
  assert abs(sweep.smoothed_final(step, noisy) - line[-1]) < abs(noisy[-1] - line[-1])


def _parse_flags(command: str) -> tuple[str, dict]:
  parts = command.split()
  assert parts[1:3] == ["-m", "experiments.pretrain"]
  config = next(p.split("=", 1)[1] for p in parts if p.startswith("--config="))
  flags = {}
  for p in parts:
    if p.startswith("--config."):
      key, value = p[len("--config."):].split("=", 1)
      value = value.strip("'")
      try:
        flags[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        flags[key] = value
  return config, flags


def test_pod_commands_reproduce_the_local_run_configs(tmp_path):
  c = _config()
  c.sweep.multi_host = True
  runs = sweep.plan(c, vocab_size=512)
  commands = sweep.pod_commands(c, str(tmp_path), runs)
  assert len(commands) == len(runs)
  for r, cmd in zip(runs, commands):
    assert f"--workdir={tmp_path}/runs/{r.name}" in cmd
    for flag in ("--coordinator_address=", "--num_processes=", "--process_id="):
      assert flag in cmd
    config_file, flags = _parse_flags(cmd)
    rebuilt = load_config_file(config_file)
    for key, value in flags.items():
      block = rebuilt
      *path, last = key.split(".")
      for part in path:
        block = block[part]
      block[last] = value
    assert config_to_dict(rebuilt) == config_to_dict(sweep.run_config(c, r))


def _rows(workdir):
  with open(os.path.join(workdir, "results.csv")) as f:
    return {r["name"]: r for r in csv.DictReader(f)}


def test_sweep_experiment_end_to_end(tmp_path, data_cache):
  """3 tiny runs (one with an impossible shape), rerun skips/resumes, pod mode prints."""
  work = str(tmp_path / "sweep")
  args = [f"--config.pretrain.data.cache_dir={data_cache}", "--config.sweep.widths=(16,32,32)",
          "--config.sweep.depths=(1,1,0)", "--config.sweep.isoflops=()",
          "--config.sweep.tokens=(1024,)", "--config.sweep.bootstrap=0"]
  proc = launcher.run("sweep", "configs/sweep.py:tiny", work, *args, timeout=900)
  rows = _rows(work)
  assert set(rows) == {"D1.0e03_w16_l1", "D1.0e03_w32_l1", "D1.0e03_w32_l0"}
  bad = rows.pop("D1.0e03_w32_l0")
  assert bad["status"] == "failed" and "config.model.num_layers=0 must be > 0" in bad["error"]
  for r in rows.values():
    assert r["status"] == "ok" and r["error"] == ""
    assert int(r["tokens"]) == 1024 and int(r["steps"]) == 4
    assert float(r["c_6nd"]) == 6 * int(r["n_total"]) * int(r["tokens"])
    assert float(r["c_attention"]) > float(r["c_6nd_non_embedding"])
    assert 0 < float(r["eval_loss"]) < 7 and 0 < float(r["final_loss"]) < 7
    assert float(r["wall_s"]) > 0
    run_dir = os.path.join(work, "runs", r["name"])
    assert json.load(open(os.path.join(run_dir, "config.json")))["train"]["steps"] == 4
  assert "sweep 3/3" in proc.stderr and "ETA" in proc.stderr
  fits = json.load(open(os.path.join(work, "fits.json")))
  assert fits["num_runs"] == 2 and fits["num_failed"] == 1
  assert "needs at least 6" in fits["approach3"]["error"]   # too few runs: said, not crashed

  # Rerun: finished runs are skipped; a run without its result (as if interrupted after
  # its last checkpoint) resumes from its checkpoint; the failed one is tried and recorded.
  metrics16 = os.path.join(work, "runs", "D1.0e03_w16_l1", "metrics.jsonl")
  before = open(metrics16).read()
  os.remove(os.path.join(work, "runs", "D1.0e03_w32_l1", "result.json"))
  proc = launcher.run("sweep", "configs/sweep.py:tiny", work, *args, timeout=900)
  assert "1 of 3 runs already finished" in proc.stderr
  assert "D1.0e03_w32_l1 (resuming)" in proc.stderr
  assert open(metrics16).read() == before
  again = _rows(work)
  assert again["D1.0e03_w32_l1"]["status"] == "ok"
  assert float(again["D1.0e03_w32_l1"]["eval_loss"]) == pytest.approx(
      float(rows["D1.0e03_w32_l1"]["eval_loss"]), rel=1e-6)
  assert again["D1.0e03_w32_l0"]["status"] == "failed"

  # Fit mode (after a pod sweep): a finished run without result.json is collected from its
  # workdir (checkpoint at its planned step), nothing is trained.
  os.remove(os.path.join(work, "runs", "D1.0e03_w16_l1", "result.json"))
  launcher.run("sweep", "configs/sweep.py:tiny", work, *args, "--config.sweep.mode=fit")
  collected = _rows(work)["D1.0e03_w16_l1"]
  assert collected["status"] == "ok" and open(metrics16).read() == before
  assert float(collected["eval_loss"]) == pytest.approx(float(rows["D1.0e03_w16_l1"]["eval_loss"]),
                                                        rel=1e-6)
  assert _rows(work)["D1.0e03_w32_l0"]["status"] == "pending"   # never finished

  # Pod mode on a fresh workdir: one launch command per run, nothing trained.
  pod = str(tmp_path / "pod")
  proc = launcher.run("sweep", "configs/sweep.py:tiny", pod, *args, "--config.sweep.mode=pod")
  commands = [x for x in proc.stdout.splitlines() if "experiments.pretrain" in x]
  assert len(commands) == 3
  assert open(os.path.join(pod, "commands.sh")).read().splitlines() == commands
  assert not os.path.exists(os.path.join(pod, "runs"))
