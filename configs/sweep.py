r"""Scaling-law sweep: IsoFLOP profiles of tiny GPTs on the embedded world, then Kaplan
and Chinchilla (approaches 1-3) fits and plots.

Command (default: 3 IsoFLOP profiles, C = 2e10, 4e10 and 8e10 FLOPs (C = 6ND,
N = all params), each over 6 one-layer shapes of width 8-48 (5.5k-56k params):
18 runs, 21.5k steps of 8 x 64 tokens (11M tokens in all) on the `medium`
world (9M tokens; the longest run reads 2.4M, so no run repeats data), vocab 512):
  python -m experiments.sweep --config=configs/sweep.py --workdir=runs/sweep
Runtime: measured 14m52s (13m48s of runs, 30-59 s each, + 54 s of fits) on the
2-core CPU shared with other jobs (load average 6-12); less on an idle machine.
Writes WORKDIR/results.csv|json (one row per run: N, D, C, losses, wall time),
fits.json, summary.md, loss_vs_compute.png, isoflop.png, optimal.png; each run
is an ordinary pretraining workdir WORKDIR/runs/<name>. Expected: each IsoFLOP
profile has its minimum inside the sizes run; see BUILD_NOTES.md for the fits.

Modes (--config.sweep.mode=): local (default: run here, one after another;
re-running skips finished runs, resumes interrupted ones, retries failed ones),
pod (print and write WORKDIR/commands.sh: one experiments.pretrain command per
run; --config.sweep.multi_host=True adds --coordinator_address/--num_processes/
--process_id placeholders), fit (collect the finished runs, fit and plot).

Presets: `tiny`: one IsoFLOP profile (C = 2e8) of 3 one-layer sizes, 2-11 steps
each, on the tiny world (a smoke test, not a scaling law): ~1 min idle, ~2 min
on a busy 2-core CPU.
Per-run settings live in config.pretrain (configs/pretrain.py's fields), e.g.
--config.pretrain.optim.learning_rate=1e-3; the plan in config.sweep, e.g.
--config.sweep.isoflops='(1e11,)' --config.sweep.widths='(32,64)'.
"""

import ml_collections

from configs import pretrain
from llmrl.scaling import sweep


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in ("", "tiny"):
    raise ValueError(f"unknown preset {preset!r} for configs/sweep.py; use tiny")
  c = ml_collections.ConfigDict()
  c.pretrain = pretrain.get_config()
  p = c.pretrain
  p.data.world_size = "medium"    # ~9M tokens: no run repeats data
  p.data.vocab_size = 512         # small vocab: embeddings do not swamp tiny models
  p.train.seq_len = 64
  p.train.global_batch_size = 8    # small batches: tiny budgets still get many steps
  p.train.log_every = 20
  p.train.checkpoint_every = 500
  p.optim.learning_rate = 3e-3
  p.optim.warmup_steps = 50       # capped at sweep.warmup_fraction of each run
  c.sweep = sweep.default_config()
  s = c.sweep
  s.widths = (8, 12, 16, 24, 32, 48)  # depth by the rule: round(width / 48) -> 1 layer
  s.isoflops = (2e10, 4e10, 8e10)
  s.eval_batches = 32             # 16k held-out tokens per run
  if preset == "tiny":
    p.data.world_size = "tiny"
    p.train.seq_len = 32
    p.train.global_batch_size = 8
    p.train.log_every = 2
    p.train.checkpoint_every = 4
    s.widths = (16, 32, 48)
    s.depths = (1, 1, 1)
    s.isoflops = (2e8,)
    s.min_steps = 2
    s.eval_batches = 2
    s.bootstrap = 5
  return c
