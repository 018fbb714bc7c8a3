"""Scaling-law sweeps: a plan of ordinary pretraining runs, run locally or on a pod.

A sweep config has `config.pretrain` (a configs/pretrain.py config: data, batch,
optimizer, seed shared by every run) and `config.sweep` (`default_config`). The
plan is:
  grid     every model shape x every token budget in sweep.tokens;
  isoflop  for each budget C in sweep.isoflops, every shape with D = C / (6 N),
           N = total parameters (embeddings included, as Hoffmann et al.).
Model shapes (the documented rule): width w from sweep.widths; depth from
sweep.depths (same length) or max(1, round(w / sweep.aspect_ratio)); heads =
max(1, w // sweep.head_dim); d_ff = sweep.ff_ratio * w.
Each run is `llmrl.rlhf.pipeline.pretrain` in SWEEP/runs/<name> with train.steps
= round(D / tokens per step), so its cosine schedule decays over its own budget,
and warmup = min(optim.warmup_steps, sweep.warmup_fraction * steps).

Re-running skips runs whose result.json says "ok", resumes interrupted runs from
their checkpoints (the trainer does that) and retries failed ones; a failure is
recorded (status "failed" and the error) and the sweep goes on.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import os
import shlex
import time

import ml_collections
import numpy as np

from llmrl.config import ConfigError, check_enum, check_positive

log = logging.getLogger("llmrl")

MODES = ("local", "pod", "fit")
FIT_LOSSES = ("eval", "smoothed", "final")
COLUMNS = ("name", "kind", "budget", "status", "width", "depth", "heads", "d_ff", "steps",
           "tokens", "n_total", "n_non_embedding", "c_6nd", "c_6nd_non_embedding",
           "c_attention", "final_loss", "smoothed_loss", "eval_loss", "wall_s", "error", "n_stored")


def default_config() -> ml_collections.ConfigDict:
  """`config.sweep`: the plan, how it runs and how it is fitted."""
  c = ml_collections.ConfigDict()
  c.mode = "local"            # local: run here one after another; pod: write launch
                              # commands; fit: collect finished runs, fit and plot
  c.widths = (32, 64, 128)    # model widths (d_model)
  c.depths = ()               # layers per width (same length), () = the aspect rule
  c.aspect_ratio = 48         # depth = max(1, round(width / aspect_ratio))
  c.head_dim = 16             # heads = max(1, width // head_dim)
  c.ff_ratio = 4              # d_ff = ff_ratio * width
  c.tokens = ()               # grid token budgets D (every width x every budget)
  c.isoflops = ()             # IsoFLOP budgets C = 6 N D, N = total params
  c.min_steps = 10            # planned runs with fewer steps are dropped (and logged)
  c.warmup_fraction = 0.1     # warmup = min(optim.warmup_steps, fraction * steps)
  c.eval_batches = 8          # held-out batches (validation split) for eval_loss
  c.fit_loss = "eval"         # loss the fits use: eval | smoothed | final
  c.bootstrap = 100           # bootstrap resamples for confidence intervals (0 = none)
  c.multi_host = False        # pod mode: add --coordinator_address/--num_processes/--process_id
  c.python = "python"         # pod mode: interpreter in the launch commands
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks config.sweep before anything runs."""
  check_enum("sweep.mode", c.mode, MODES)
  check_enum("sweep.fit_loss", c.fit_loss, FIT_LOSSES)
  for k in ("aspect_ratio", "head_dim", "ff_ratio", "min_steps", "eval_batches"):
    check_positive(f"sweep.{k}", c[k])
  if not c.widths:
    raise ConfigError("config.sweep.widths is empty; give model widths, e.g. (32, 64, 128).")
  if c.depths and len(c.depths) != len(c.widths):
    raise ConfigError(f"config.sweep.depths has {len(c.depths)} entries but "
                      f"config.sweep.widths has {len(c.widths)}; give one depth per width "
                      "or () for the aspect rule.")
  if not c.tokens and not c.isoflops:
    raise ConfigError("config.sweep.tokens and config.sweep.isoflops are both empty; give "
                      "token budgets (grid) and/or compute budgets (IsoFLOP profiles).")
  for name in ("tokens", "isoflops"):
    for v in c[name]:
      if not v > 0:
        raise ConfigError(f"config.sweep.{name} has {v!r}; every budget must be > 0.")


@dataclasses.dataclass
class Run:
  """One planned pretraining run of the sweep."""
  name: str
  kind: str          # "grid" | "isoflop"
  budget: float      # token budget (grid) or compute budget C (isoflop)
  width: int
  depth: int
  heads: int
  d_ff: int
  steps: int
  tokens: int        # D = steps * tokens per step
  n_total: int
  n_non_embedding: int
  flops_per_token: float  # training FLOPs per token with the attention term
  n_stored: int = 0  # every parameter held, inactive experts included (= n_total when dense)

  def overrides(self, warmup: int) -> dict:
    """Dotted config keys this run sets on top of config.pretrain."""
    return {"model.d_model": self.width, "model.num_layers": self.depth,
            "model.num_heads": self.heads, "model.d_ff": self.d_ff,
            "train.steps": self.steps, "optim.warmup_steps": warmup}


def shape(c: ml_collections.ConfigDict, i: int) -> tuple[int, int, int, int]:
  """(width, depth, heads, d_ff) of the i-th width, by the documented rule."""
  w = int(c.widths[i])
  depth = int(c.depths[i]) if c.depths else max(1, round(w / c.aspect_ratio))
  return w, depth, max(1, w // c.head_dim), c.ff_ratio * w


def _counts(pretrain, width, depth, heads, d_ff, vocab_size) -> tuple[int, int, float, int]:
  """(params, non-embedding params, training FLOPs per token, stored params) of a shape.

  N counts the parameters a token uses: for a mixture-of-experts model
  (config.pretrain.model.moe) the active ones, so C = 6 N D stays the compute;
  for a dense model active = stored.
  """
  from llmrl.models.accounting import count_params_from_config, flops_per_token
  from llmrl.tasks.lm import make_gpt_config
  m = copy.deepcopy(pretrain.model)
  m.d_model, m.num_layers, m.num_heads, m.d_ff = width, depth, heads, d_ff
  try:
    cfg = make_gpt_config(m, vocab_size, pretrain.train.seq_len)
    n = count_params_from_config(cfg)
    fpt = flops_per_token(cfg, pretrain.train.seq_len)
  except (ZeroDivisionError, ValueError):  # an impossible shape: the run will report it
    return 0, 0, 0.0, 0
  return n["active"], n["active_non_embedding"], fpt, n["total"]


def plan(config: ml_collections.ConfigDict, vocab_size: int) -> list[Run]:
  """The sweep's runs in launch order (IsoFLOP profiles first, then the grid)."""
  c, p = config.sweep, config.pretrain
  validate(c)
  per_step = p.train.global_batch_size * p.train.seq_len
  runs: list[Run] = []

  def add(kind, budget, i, tokens, label):
    w, depth, heads, d_ff = shape(c, i)
    n_total, n_non, fpt, n_stored = _counts(p, w, depth, heads, d_ff, vocab_size)
    if kind == "isoflop":
      tokens = budget / (6.0 * n_total) if n_total else 0.0
    steps = int(round(tokens / per_step))
    name = f"{label}_w{w}_l{depth}"
    if steps < c.min_steps and n_total:
      log.info("sweep: %s dropped: %d steps < sweep.min_steps=%d", name, steps, c.min_steps)
      return
    runs.append(Run(name, kind, float(budget), w, depth, heads, d_ff, max(steps, 1),
                    max(steps, 1) * per_step, n_total, n_non, fpt, n_stored))

  for budget in c.isoflops:
    for i in range(len(c.widths)):
      add("isoflop", budget, i, 0.0, f"C{budget:.1e}".replace("+", ""))
  for tokens in c.tokens:
    for i in range(len(c.widths)):
      add("grid", tokens, i, tokens, f"D{tokens:.1e}".replace("+", ""))
  names = [r.name for r in runs]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ConfigError(f"config.sweep plans two runs named {dup[0]}: remove repeated widths "
                      "or budgets.")
  return runs


def run_config(config: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
  """config.pretrain with this run's shape, steps and warmup."""
  rc = copy.deepcopy(config.pretrain)
  warm = min(int(rc.optim.warmup_steps), max(1, int(config.sweep.warmup_fraction * run.steps)))
  with rc.unlocked():
    for key, value in run.overrides(warm).items():
      block, field = key.split(".")
      rc[block][field] = value
  return rc


def run_dir(workdir: str, run: Run) -> str:
  return os.path.join(workdir, "runs", run.name)


# ---------------------------------------------------------------- recording


def read_curve(rdir: str) -> dict:
  """Logged train losses of a run: arrays "step" and "loss" (empty if none)."""
  from llmrl.train.metrics import read_jsonl
  path = os.path.join(rdir, "metrics.jsonl")
  recs = [r for r in read_jsonl(path) if "train/loss" in r] if os.path.exists(path) else []
  return {"step": np.array([r["step"] for r in recs], np.float64),
          "loss": np.array([r["train/loss"] for r in recs], np.float64)}


def smoothed_final(step: np.ndarray, loss: np.ndarray) -> float:
  """The final loss with batch noise averaged out.

  A least-squares line through the last quarter of the logged losses (at least
  3 points), read at the final step: a plain mean over a falling curve would be
  biased upwards.
  """
  if len(loss) == 0:
    return float("nan")
  k = max(3, len(loss) // 4)
  s, y = step[-k:], loss[-k:]
  if len(y) < 3 or np.ptp(s) == 0:
    return float(y[-1])
  slope, intercept = np.polyfit(s, y, 1)
  return float(slope * s[-1] + intercept)


def eval_loss(rdir: str, num_batches: int) -> float:
  """Mean held-out token loss of a finished run's newest params (validation split)."""
  import jax

  from llmrl import data as data_lib
  from llmrl.models import GPT
  from llmrl.objectives.lm import causal_lm_loss
  from llmrl.tasks import lm
  stage = lm.load_stage(rdir)
  model = GPT(stage.model_config)
  dc = stage.config.data
  seq_len = stage.config.train.seq_len
  batches = data_lib.lm_batches(dc, stage.tokenizer, batch_size=stage.config.train.global_batch_size,
                                seq_len=seq_len, seed=0, split="validation")

  @jax.jit
  def sums(params, batch):
    logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                         segment_ids=batch["segment_ids"], deterministic=True)
    _, (weight, s) = causal_lm_loss(logits, batch["targets"], batch["weights"])
    return s["nll"], weight

  total = count = 0.0
  for _ in range(num_batches):
    nll, w = jax.device_get(sums(stage.params, next(batches)))
    total, count = total + float(nll), count + float(w)
  return total / max(count, 1.0)


def result_row(run: Run, status: str, rdir: str, eval_batches: int, wall_s: float,
               error: str = "") -> dict:
  """One results-table row (see COLUMNS) from a run's workdir."""
  row = {k: v for k, v in dataclasses.asdict(run).items() if k in COLUMNS}
  d = float(run.tokens)
  row.update(status=status, error=error, wall_s=float(wall_s),
             c_6nd=6.0 * run.n_total * d, c_6nd_non_embedding=6.0 * run.n_non_embedding * d,
             c_attention=run.flops_per_token * d, final_loss=float("nan"),
             smoothed_loss=float("nan"), eval_loss=float("nan"))
  if status == "ok":
    curve = read_curve(rdir)
    if len(curve["loss"]):
      row["final_loss"] = float(curve["loss"][-1])
      row["smoothed_loss"] = smoothed_final(curve["step"], curve["loss"])
    row["eval_loss"] = eval_loss(rdir, eval_batches)
  return row


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def write_table(workdir: str, rows: list[dict]) -> None:
  """workdir/results.csv and workdir/results.json (one row per planned run)."""
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k, "") for k in COLUMNS})
  _write_json(os.path.join(workdir, "results.json"), rows)


def read_table(workdir: str) -> list[dict]:
  rows = _read_json(os.path.join(workdir, "results.json"))
  if rows is None:
    raise FileNotFoundError(f"{workdir}/results.json is missing: run the sweep first "
                            "(sweep.mode=local, or mode=fit after a pod sweep).")
  return rows


def _pending_row(run: Run) -> dict:
  row = result_row(run, "pending", "", 0, float("nan"))
  return row


# ---------------------------------------------------------------- running


def run_local(config: ml_collections.ConfigDict, workdir: str, runs: list[Run]) -> list[dict]:
  """Runs the plan here, one run after another, with a sweep-level progress line."""
  from llmrl.rlhf import pipeline
  from llmrl.train.metrics import format_duration
  os.makedirs(workdir, exist_ok=True)
  rows = {}
  for r in runs:
    old = _read_json(os.path.join(run_dir(workdir, r), "result.json"))
    rows[r.name] = old if old and old.get("status") == "ok" else _pending_row(r)
  todo = [r for r in runs if rows[r.name]["status"] != "ok"]
  if len(todo) < len(runs):
    log.info("sweep: %d of %d runs already finished; skipping them", len(runs) - len(todo),
             len(runs))
  total_c = sum(r.flops_per_token * r.tokens for r in todo) or 1.0
  done_c, t0 = 0.0, time.perf_counter()
  for k, r in enumerate(todo):
    rdir = run_dir(workdir, r)
    resumed = os.path.isdir(os.path.join(rdir, "checkpoints"))
    log.info("sweep: run %d/%d %s%s: width %d, %d layers, %d heads, N=%d, D=%d (%d steps)",
             k + 1, len(todo), r.name, " (resuming)" if resumed else "", r.width, r.depth,
             r.heads, r.n_total, r.tokens, r.steps)
    start = time.perf_counter()
    try:
      pipeline.pretrain(run_config(config, r), rdir)
      row = result_row(r, "ok", rdir, config.sweep.eval_batches, time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
      msg = f"{type(e).__name__}: {e}".splitlines()[0]
      log.warning("sweep: run %s failed: %s", r.name, msg)
      row = result_row(r, "failed", rdir, 0, time.perf_counter() - start, msg)
    os.makedirs(rdir, exist_ok=True)
    _write_json(os.path.join(rdir, "result.json"), row)
    rows[r.name] = row
    write_table(workdir, [rows[x.name] for x in runs])
    done_c += r.flops_per_token * r.tokens
    elapsed = time.perf_counter() - t0
    eta = elapsed * (total_c - done_c) / done_c if done_c else float("nan")
    log.info("sweep %d/%d | %s %s loss %.4f | %.0f%% of compute | elapsed %s | ETA %s",
             k + 1, len(todo), r.name, row["status"], row.get("eval_loss", float("nan")),
             100 * done_c / total_c, format_duration(elapsed), format_duration(eta))
  write_table(workdir, [rows[x.name] for x in runs])
  return [rows[x.name] for x in runs]


def flag_value(v) -> str:
  """A config value as a --config.key= flag value."""
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, (tuple, list)):
    return "(" + ",".join(flag_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return str(v)


def _diff(base: ml_collections.ConfigDict, conf: ml_collections.ConfigDict,
          prefix: str = "") -> dict:
  out = {}
  for k, v in conf.items():
    key = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_diff(base[k], v, key + "."))
    elif k not in base or base[k] != v:
      out[key] = v
  return out


def pod_commands(config: ml_collections.ConfigDict, workdir: str, runs: list[Run],
                 base_config: str = "configs/pretrain.py") -> list[str]:
  """One `experiments.pretrain` launch command per unfinished run, for a scheduler.

  Each command sets, as --config.* flags, every field where the run's config
  differs from `base_config`'s default, so it trains exactly what local mode would.
  """
  from llmrl.config import load_config_file
  base = load_config_file(base_config)
  lines = []
  for r in runs:
    if (_read_json(os.path.join(run_dir(workdir, r), "result.json")) or {}).get("status") == "ok":
      continue
    rc = run_config(config, r)
    flags = [f"--config.{k}={shlex.quote(flag_value(v))}" for k, v in _diff(base, rc).items()]
    cmd = [config.sweep.python, "-m", "experiments.pretrain", f"--config={base_config}",
           f"--workdir={shlex.quote(run_dir(workdir, r))}", *flags]
    if config.sweep.multi_host:
      cmd += ["--coordinator_address=$COORDINATOR_ADDRESS", "--num_processes=$NUM_PROCESSES",
              "--process_id=$PROCESS_ID"]
    lines.append(" ".join(cmd))
  return lines


def collect(config: ml_collections.ConfigDict, workdir: str, runs: list[Run]) -> list[dict]:
  """Records runs launched elsewhere (pod mode): finished ones become "ok" rows.

  A run counts as finished when its newest checkpoint is at its planned step;
  wall time is read from the logged throughput (compilation excluded).
  """
  from llmrl.train.checkpoint import Checkpointer
  from llmrl.train.metrics import read_jsonl
  rows = []
  for r in runs:
    rdir = run_dir(workdir, r)
    old = _read_json(os.path.join(rdir, "result.json"))
    if old and old.get("status") == "ok":
      rows.append(old)
      continue
    ckpt_dir = os.path.join(rdir, "checkpoints")
    step = Checkpointer(ckpt_dir).latest_step() if os.path.isdir(ckpt_dir) else None
    if step != r.steps:
      row = _pending_row(r)
      row["error"] = f"not finished (checkpoint step {step} of {r.steps})"
      rows.append(row)
      continue
    recs = [x for x in read_jsonl(os.path.join(rdir, "metrics.jsonl")) if "perf/steps_per_s" in x]
    wall = r.steps / recs[-1]["perf/steps_per_s"] if recs else float("nan")
    row = result_row(r, "ok", rdir, config.sweep.eval_batches, wall)
    _write_json(os.path.join(rdir, "result.json"), row)
    rows.append(row)
  os.makedirs(workdir, exist_ok=True)
  write_table(workdir, rows)
  return rows


def finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)
