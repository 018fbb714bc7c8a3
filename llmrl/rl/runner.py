"""Host side of an RL run: chunked jitted training over vmapped seeds, logs, plots, results.

`run(config, workdir)` trains `config.num_seeds` seeds at once
(`jax.jit(jax.vmap(chunk))`), one chunk of `config.train.log_every` updates
per call, so the only host syncs are at chunk boundaries: one progress line,
one metrics.jsonl/TensorBoard record (means over seeds) and optionally a
checkpoint per chunk. At the end: a final evaluation of every seed,
results.json and curves.png. Rerunning on the same workdir resumes from the
newest checkpoint and gives the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np

from llmrl.rl import loop
from llmrl.train.metrics import MetricWriter, format_duration

log = logging.getLogger("llmrl")


def _si(x: float) -> str:
  for unit, div in (("M", 1e6), ("k", 1e3)):
    if abs(x) >= div:
      return f"{x / div:.1f}{unit}"
  return f"{x:.0f}"


def chunk_record(m: dict) -> dict:
  """Per-seed chunk metrics [seeds] -> one flat record of seed means (plus eval spread)."""
  rec = {}
  episodes = np.asarray(m.get("sum/episodes", np.zeros(1)), np.float64)
  if "sum/episode_return" in m and episodes.sum() > 0:
    with np.errstate(invalid="ignore", divide="ignore"):
      per_seed = np.asarray(m["sum/episode_return"]) / episodes
      lengths = np.asarray(m["sum/episode_length"]) / episodes
    rec["train/episode_return"] = float(np.nanmean(per_seed))
    rec["train/episode_length"] = float(np.nanmean(lengths))
  rec["train/episodes"] = float(episodes.mean())
  for k, v in m.items():
    if k.startswith("sum/"):
      continue
    v = np.asarray(v, np.float64)
    rec[k] = float(v.mean())
    if k == "eval/return":
      rec["eval/return_min_seed"], rec["eval/return_max_seed"] = float(v.min()), float(v.max())
  return rec


def plot_curves(records: list[dict], path: str, title: str) -> None:
  """curves.png: evaluation and training returns against environment steps."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = np.array([r["step"] for r in records])
  if any("eval/return" in r for r in records):
    ev = [(r["step"], r["eval/return"], r["eval/return_min_seed"], r["eval/return_max_seed"])
          for r in records if "eval/return" in r]
    s, mean, lo, hi = map(np.array, zip(*ev))
    ax.plot(s, mean, label="evaluation return (mean over seeds)")
    ax.fill_between(s, lo, hi, alpha=0.25, label="min-max over seeds")
  tr = [(r["step"], r["train/episode_return"]) for r in records if "train/episode_return" in r]
  if tr:
    s, v = map(np.array, zip(*tr))
    ax.plot(s, v, alpha=0.7, label="training episode return")
  ax.set_xlabel("environment steps (per seed)")
  ax.set_ylabel("return")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  if len(steps):
    ax.set_xlim(0, steps.max())
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str, verbose: bool = True,
        stop_after_chunks: int | None = None) -> dict:
  """Trains, evaluates and writes metrics.jsonl, TensorBoard, results.json, curves.png.

  `stop_after_chunks` ends the run early, right after that chunk's checkpoint,
  as if it had been killed (for resume tests); it returns {"stopped": chunk}.
  """
  p = loop.plan(config)  # validates the config (ConfigError) before anything compiles
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  seeds = config.num_seeds
  keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
  steps_per_update = p.algo.steps_per_update
  sizes = [p.chunk] * p.num_chunks + ([p.remainder] if p.remainder else [])
  ends = np.cumsum(sizes) * steps_per_update  # env steps per seed after each chunk
  name = f"{config.algo.name}{'-' + config.algo.objective if 'objective' in config.algo else ''}"
  name = f"{name} {config.env.name}"

  t_start = time.perf_counter()
  init = jax.jit(jax.vmap(p.algo.init))
  state = init(keys)
  fns = {n: jax.jit(jax.vmap(lambda s, n=n: p.run_chunk(s, n)), donate_argnums=0)
         .lower(state).compile() for n in sorted(set(sizes))}
  compile_s = time.perf_counter() - t_start
  # Where the compiled chunk wants the state: one device, or replicated over the
  # two devices of PPO's actor_critic_update="parallel".
  place = lambda s: jax.device_put(s, fns[sizes[0]].input_shardings[0][0])
  state = place(state)
  log.info("%s: %d seed(s) x %d updates of %d env steps (%d chunks); compiled in %.1fs",
           name, seeds, p.num_updates, steps_per_update, len(sizes), compile_s)

  ckpt, start = None, 0
  if t.checkpoint_every:
    from llmrl.train.checkpoint import Checkpointer
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                            state)
    restored = ckpt.restore_latest(abstract)
    if restored is not None:
      _, state, data = restored
      state = place(state)
      start = int(data["chunk"])
      log.info("resumed from checkpoint after chunk %d (%s env steps per seed)",
               start, _si(ends[start - 1]))
  writer = MetricWriter(workdir)
  if start:
    writer.truncate_after(int(ends[start - 1]))
  else:
    writer.truncate_after(-1)

  t0, done_steps = time.perf_counter(), 0
  for i in range(start, len(sizes)):
    state, m = fns[sizes[i]](state)
    rec = chunk_record(jax.device_get(m))
    now = time.perf_counter()
    done_steps += sizes[i] * steps_per_update
    rate = done_steps * seeds / (now - t0)
    rec["perf/env_steps_per_s"] = rate
    writer.write(int(ends[i]), rec)
    stop = stop_after_chunks is not None and i + 1 >= stop_after_chunks
    if ckpt is not None and ((i + 1) % t.checkpoint_every == 0 or i + 1 == len(sizes) or stop):
      ckpt.save(i + 1, state, {"chunk": i + 1})
    if verbose:
      eta = (ends[-1] - ends[i]) * seeds / rate
      parts = [f"rl {name}", f"chunk {i + 1}/{len(sizes)}",
               f"steps {_si(ends[i])}/{_si(ends[-1])}"]
      if "eval/return" in rec:
        parts.append(f"eval {rec['eval/return']:.1f} (min seed {rec['eval/return_min_seed']:.1f})")
      if "train/episode_return" in rec:
        parts.append(f"train ep {rec['train/episode_return']:.1f}")
      parts += [f"{_si(rate)} env steps/s", f"ETA {format_duration(eta)}"]
      print(" | ".join(parts), flush=True)
    if stop and i + 1 < len(sizes):
      writer.close()
      if ckpt is not None:
        ckpt.close()
      return {"stopped": i + 1}
  train_s = time.perf_counter() - t0
  writer.flush()

  episodes = t.final_eval_episodes
  result = {"algo": config.algo.name, "env": config.env.name, "num_seeds": seeds,
            "env_steps_per_seed": int(ends[-1]), "compile_s": compile_s,
            "train_wall_s": train_s,
            "env_steps_per_s": (int(ends[-1]) - (int(ends[start - 1]) if start else 0))
            * seeds / max(train_s, 1e-9)}
  if episodes:
    ev_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0xE7A1))(keys)
    returns, lengths = jax.device_get(jax.jit(jax.vmap(
        lambda s, k: p.evaluate(s, k, episodes)))(state, ev_keys))
    per_seed = returns.mean(axis=1)
    result["final_eval"] = {
        "episodes_per_seed": episodes, "greedy": bool(t.eval_greedy),
        "mean_return_per_seed": [float(x) for x in per_seed],
        "mean_return": float(per_seed.mean()), "min_seed_mean_return": float(per_seed.min()),
        "std_return": float(returns.std()), "mean_length": float(lengths.mean())}
    writer.write(int(ends[-1]), {"final/eval_return": float(per_seed.mean()),
                                 "final/eval_return_min_seed": float(per_seed.min())})
    log.info("final evaluation (%d episodes per seed, %s): mean return %.2f; per seed %s",
             episodes, "greedy" if t.eval_greedy else "sampled", per_seed.mean(),
             [round(float(x), 1) for x in per_seed])
  writer.close()
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  if t.plot:
    from llmrl.train.metrics import read_jsonl
    records = [r for r in read_jsonl(writer.path) if "final/eval_return" not in r]
    plot_curves(records, os.path.join(workdir, "curves.png"), name)
  if ckpt is not None:
    ckpt.close()
  result["state"] = state
  return result


def steps_to_threshold(records: list[dict], threshold: float, key: str = "eval/return") -> float:
  """First logged env step at which `key` reached `threshold` (inf if never)."""
  for r in records:
    if r.get(key, -math.inf) >= threshold:
      return float(r["step"])
  return math.inf


__all__ = ["chunk_record", "plot_curves", "run", "steps_to_threshold"]
