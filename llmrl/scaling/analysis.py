"""Fits of a sweep's results table: Kaplan laws and Chinchilla approaches 1-3.

Which N each fit uses follows its paper: Kaplan's laws use non-embedding
parameters; the Chinchilla approaches use all parameters. Final points use the
`fit_loss` column (held-out eval loss by default); the training curves of
approach 1 and Kaplan's L(D), L(C) are the logged train losses (a centred moving
average of 5 logs), each point at D_t = step * tokens per step.
"""

from __future__ import annotations

import math
import os

import numpy as np

from llmrl.scaling import chinchilla, laws, sweep

SMOOTH = 5  # logged train losses averaged (centred) in the curves of approach 1 and L(D), L(C)


def _curves(rows: list[dict], workdir: str) -> list[dict]:
  out = []
  for r in rows:
    c = sweep.read_curve(os.path.join(workdir, "runs", r["name"]))
    if len(c["loss"]) < 2:
      continue
    k = min(SMOOTH, len(c["loss"]) - (1 - len(c["loss"]) % 2))  # odd, <= length
    loss = np.convolve(c["loss"], np.ones(k) / k, mode="valid")  # centred moving average
    step = c["step"][k // 2:len(c["step"]) - k // 2]
    per_step = r["tokens"] / r["steps"]
    out.append({"name": r["name"], "n_params": float(r["n_total"]),
                "n_non_embedding": float(r["n_non_embedding"]), "tokens": step * per_step,
                "loss": loss})
  return out


def _attempt(fn, *args, **kw) -> dict:
  """fn(...) or {"error": message} when the data cannot support the fit."""
  try:
    return fn(*args, **kw)
  except ValueError as e:
    return {"error": str(e)}


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def analyse(rows: list[dict], workdir: str, fit_loss: str = "eval",
            bootstrap: int = 100) -> tuple[dict, dict]:
  """(fits, extras): JSON-friendly fit results, and curves/envelopes for the plots."""
  key = f"{fit_loss}_loss"
  ok = [r for r in rows if r["status"] == "ok" and sweep.finite(r.get(key))]
  fits: dict = {"num_runs": len(ok), "num_failed": sum(r["status"] == "failed" for r in rows),
                "loss": key}
  n_tot = np.array([r["n_total"] for r in ok], np.float64)
  n_ne = np.array([r["n_non_embedding"] for r in ok], np.float64)
  d = np.array([r["tokens"] for r in ok], np.float64)
  loss = np.array([r[key] for r in ok], np.float64)
  curves = _curves(ok, workdir)
  extras: dict = {"curves": curves, "rows": ok}

  # Kaplan et al. 2020 (non-embedding N).
  best_n = {}
  for n, l_ in zip(n_ne, loss):
    best_n[n] = min(l_, best_n.get(n, np.inf))
  kap = {"L_N": _attempt(laws.fit_power_law, list(best_n), list(best_n.values()), "N")}
  kcurves = [{**c, "n_params": c["n_non_embedding"],
              "compute": 6.0 * c["n_non_embedding"] * c["tokens"]} for c in curves]
  for name, x_key in (("L_D", "tokens"), ("L_C", "compute")):
    env = _attempt(laws.lower_envelope, kcurves, x_key, 50)
    kap[name] = _attempt(laws.fit_power_law, env["x"], env["loss"], x_key) if "x" in env else env
  kap["L_ND"] = _attempt(laws.fit_kaplan_joint, n_ne, d, loss)
  fits["kaplan"] = kap

  # Hoffmann et al. 2022 (total N).
  a1 = _attempt(chinchilla.approach1, curves)
  extras["approach1"] = a1
  fits["approach1"] = {k: v for k, v in a1.items() if k in ("a", "b", "n_coef", "d_coef", "error")}
  iso = [r for r in ok if r["kind"] == "isoflop"]
  a2 = _attempt(chinchilla.approach2, [r["budget"] for r in iso], [r["n_total"] for r in iso],
                [r[key] for r in iso])
  fits["approach2"] = a2
  a3 = _attempt(chinchilla.fit_chinchilla, n_tot, d, loss)
  if "error" not in a3 and bootstrap:
    start = [[math.log(a3["A"]), math.log(a3["B"]), math.log(a3["E"]), a3["alpha"], a3["beta"]]]
    a3["ci90"] = chinchilla.bootstrap(
        lambda n_params, n_tokens, loss: chinchilla.fit_chinchilla(
            n_params, n_tokens, loss, num_starts=1, extra_starts=start),
        {"n_params": n_tot, "n_tokens": d, "loss": loss}, samples=bootstrap,
        keys=("E", "A", "B", "alpha", "beta", "a", "b"))
  fits["approach3"] = a3

  budgets = sorted({r["budget"] for r in iso}) or [float(np.median(6 * n_tot * d))] if ok else []
  predictions = {}
  for name in ("approach1", "approach2", "approach3"):
    fit = fits[name]
    if "error" in fit or "a" not in fit:
      continue
    preds = []
    for c in list(budgets) + [10 * max(budgets), 100 * max(budgets)]:
      p = chinchilla.compute_optimal(c, fit)
      preds.append({"flops": c, "n_opt": float(p["n_opt"]), "d_opt": float(p["d_opt"])})
    predictions[name] = preds
  fits["compute_optimal"] = predictions
  return _jsonable(fits), extras


def summary_lines(fits: dict) -> list[str]:
  """A short human-readable summary of `analyse`'s fits (for the log and summary.md)."""
  out = [f"runs fitted: {fits['num_runs']} (failed: {fits['num_failed']}), loss column "
         f"{fits['loss']}"]
  for name, f in fits["kaplan"].items():
    if "error" in f:
      out.append(f"Kaplan {name}: not fitted ({f['error']})")
    elif name == "L_ND":
      out.append(f"Kaplan L(N,D): alpha_N {f['alpha_n']:.3f}, alpha_D {f['alpha_d']:.3f}, "
                 f"N_c {f['n_c']:.3g}, D_c {f['d_c']:.3g} (rmse log {f['rmse_log']:.3f})")
    else:
      out.append(f"Kaplan {name}: alpha {f['alpha']:.3f}, x_c {f['x_c']:.3g} (r2 {f['r2']:.3f})")
  for name in ("approach1", "approach2", "approach3"):
    f = fits[name]
    if "error" in f:
      out.append(f"Chinchilla {name}: not fitted ({f['error']})")
      continue
    if name == "approach2":
      for p in f["profiles"]:
        out.append(f"IsoFLOP C={p['flops']:.3g}: N_opt {p['n_opt']:.4g}, D_opt {p['d_opt']:.4g}, "
                   f"min loss {p['loss_min']:.4f}" + ("" if p["inside"] else
                                                      " (vertex outside the sizes run)"))
    if name == "approach3":
      ci = f.get("ci90", {})

      def fmt(k, f=f, ci=ci):
        s = f"{k} {f[k]:.3f}"
        return s + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if k in ci else "")
      out.append("Chinchilla approach3: " + ", ".join(fmt(k) for k in ("E", "alpha", "beta"))
                 + f", A {f['A']:.4g}, B {f['B']:.4g}" + (" (90% bootstrap CIs)" if ci else ""))
    if "a" in f:
      out.append(f"Chinchilla {name}: N_opt ~ C^{f['a']:.3f}, D_opt ~ C^{f['b']:.3f}")
  return out
