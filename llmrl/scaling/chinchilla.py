"""Compute-optimal scaling, Hoffmann et al. 2022 ("Chinchilla"), approaches 1-3.

With C = 6 N D (N parameters, D training tokens):
  approach 1  minimum-loss envelope over training curves: at each C, the run
              with the lowest loss gives N_opt(C); fit N_opt = k_N C^a, D_opt = k_D C^b.
  approach 2  IsoFLOP profiles: at fixed C, a parabola of loss vs log N; its vertex
              is N_opt(C); then the same power-law fit across profiles.
  approach 3  L(N, D) = E + A / N^alpha + B / D^beta, fitted on log L with a Huber
              loss (delta = 1e-3) by L-BFGS from a grid of initialisations, in the
              log-sum-exp form log L = LSE(a - alpha log N, b - beta log D, e) with
              A = exp(a), B = exp(b), E = exp(e). Then
              N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
              a = beta / (alpha + beta), b = alpha / (alpha + beta).
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
from scipy import optimize

from llmrl.scaling.laws import check_points, lower_envelope

HUBER_DELTA = 1e-3
# Hoffmann et al.'s initialisation grid for (alpha, beta, e, a, b).
INIT_GRID = dict(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5),
                 e=np.arange(-1.0, 1.01, 0.5), a=np.arange(0.0, 25.1, 5.0),
                 b=np.arange(0.0, 25.1, 5.0))

# Published exponents of N_opt ~ C^a and D_opt ~ C^b, for plots and comparison.
PUBLISHED = {
  "kaplan": {"a": 0.73, "b": 0.27},             # Kaplan et al. 2020, N_opt ~ C^0.73
  "chinchilla_1": {"a": 0.50, "b": 0.50},       # Hoffmann et al. 2022, Table 2
  "chinchilla_2": {"a": 0.49, "b": 0.51},
  "chinchilla_3": {"a": 0.46, "b": 0.54},
}


def chinchilla_loss(n, d, fit: dict):
  """E + A / N^alpha + B / D^beta of an approach-3 fit."""
  n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
  return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


def _objective(theta, log_n, log_d, log_loss, delta):
  """Huber loss of log-space residuals and its gradient; theta = (a, b, e, alpha, beta)."""
  a, b, e, alpha, beta = theta
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  top = terms.max(axis=0)
  w = np.exp(terms - top)
  total = w.sum(axis=0)
  pred = top + np.log(total)
  w /= total                               # softmax weights: d pred / d term
  r = pred - log_loss
  small = np.abs(r) <= delta
  value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
  g = np.clip(r, -delta, delta)            # d huber / d r
  grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                   -(g * w[0] * log_n).sum(), -(g * w[1] * log_d).sum()])
  return value, grad


def _grid_values(log_n, log_d, log_loss, delta) -> tuple[np.ndarray, np.ndarray]:
  """Objective at every point of INIT_GRID (vectorised); returns (thetas, values)."""
  g = INIT_GRID
  thetas = np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])))
  a, b, e, alpha, beta = (thetas[:, i:i + 1] for i in range(5))
  pred = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
  r = np.abs(pred - log_loss)
  values = np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum(axis=1)
  return thetas, values


def fit_chinchilla(n_params, n_tokens, loss, *, delta: float = HUBER_DELTA,
                   num_starts: int = 8, extra_starts=()) -> dict:
  """Approach 3: fits L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 10).

  Minimises sum Huber_delta(log L_hat - log L) with L-BFGS. The whole published
  initialisation grid (4500 points) is evaluated and L-BFGS runs from the
  `num_starts` best of them (plus `extra_starts`, each (a, b, e, alpha, beta));
  the lowest final objective wins.

  Returns {"E", "A", "B", "alpha", "beta", "a", "b", "objective", "num_points"}
  where a = beta/(alpha+beta) and b = alpha/(alpha+beta) are the exponents of
  N_opt and D_opt in C.
  """
  cols = check_points(6, "fit_chinchilla", n_params=n_params, n_tokens=n_tokens, loss=loss)
  log_n, log_d = np.log(cols["n_params"]), np.log(cols["n_tokens"])
  log_loss = np.log(cols["loss"])
  thetas, values = _grid_values(log_n, log_d, log_loss, delta)
  starts = list(thetas[np.argsort(values)[:num_starts]]) + [np.asarray(s) for s in extra_starts]
  best = None
  for theta0 in starts:
    sol = optimize.minimize(_objective, theta0, args=(log_n, log_d, log_loss, delta), jac=True,
                            method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-12,
                                                        "ftol": 1e-15})
    if best is None or sol.fun < best.fun:
      best = sol
  a_, b_, e_, alpha, beta = best.x
  out = {"E": float(np.exp(e_)), "A": float(np.exp(a_)), "B": float(np.exp(b_)),
         "alpha": float(alpha), "beta": float(beta), "objective": float(best.fun),
         "num_points": int(len(log_n))}
  out.update(_exponents(alpha, beta))
  return out


def _exponents(alpha: float, beta: float) -> dict:
  s = alpha + beta
  if s <= 0:
    return {"a": float("nan"), "b": float("nan")}
  return {"a": float(beta / s), "b": float(alpha / s)}


def compute_optimal(flops, fit: dict) -> dict:
  """N_opt and D_opt for compute budget(s) `flops` (C = 6 N D) under `fit`.

  `fit` is an approach-3 result (keys alpha, beta, A, B) or an approach-1/2
  result (keys a, b, n_coef, d_coef: N_opt = n_coef C^a, D_opt = d_coef C^b).
  Returns {"n_opt", "d_opt", "a", "b"} (arrays if `flops` is an array).
  """
  c = np.asarray(flops, np.float64)
  if not np.all(np.isfinite(c)) or np.any(c <= 0):
    raise ValueError(f"compute_optimal: flops must be finite and > 0; got {flops!r}.")
  if all(k in fit for k in ("alpha", "beta", "A", "B")):
    alpha, beta, big_a, big_b = fit["alpha"], fit["beta"], fit["A"], fit["B"]
    if alpha <= 0 or beta <= 0:
      raise ValueError(f"compute_optimal: the fit has alpha={alpha:.3g}, beta={beta:.3g}; "
                       "both must be > 0 for a finite optimum (the fit did not converge "
                       "to a scaling law; add runs).")
    ex = _exponents(alpha, beta)
    g = (alpha * big_a / (beta * big_b)) ** (1.0 / (alpha + beta))
    n_opt = g * (c / 6.0) ** ex["a"]
    d_opt = (c / 6.0) ** ex["b"] / g
    return {"n_opt": n_opt, "d_opt": d_opt, **ex}
  if all(k in fit for k in ("a", "b", "n_coef", "d_coef")):
    return {"n_opt": fit["n_coef"] * c ** fit["a"], "d_opt": fit["d_coef"] * c ** fit["b"],
            "a": fit["a"], "b": fit["b"]}
  raise ValueError("compute_optimal: fit needs keys alpha, beta, A, B (fit_chinchilla) or "
                   f"a, b, n_coef, d_coef (approach 1/2); got {sorted(fit)}.")


def _optimal_power_fit(flops, n_opt) -> dict:
  """Fits N_opt = n_coef C^a and D_opt = C / (6 N_opt) = d_coef C^b (so a + b = 1)."""
  lc, ln = np.log(flops), np.log(n_opt)
  if len(lc) < 2 or np.ptp(lc) == 0:
    return {}
  a, log_k = np.polyfit(lc, ln, 1)
  return {"a": float(a), "b": float(1.0 - a), "n_coef": float(np.exp(log_k)),
          "d_coef": float(np.exp(-log_k) / 6.0)}


def approach1(curves, num: int = 200) -> dict:
  """Approach 1: the minimum-loss envelope over training curves (loss vs C = 6 N D_t).

  `curves`: list of dicts with "n_params" (number) and arrays "tokens", "loss"
  (one entry per logged step; "compute" defaults to 6 N tokens). Returns the
  envelope arrays ("flops", "loss", "n_opt", "d_opt") and the fitted exponents
  a, b with coefficients n_coef, d_coef (for compute_optimal).
  """
  prepared = []
  for i, c in enumerate(curves):
    cols = check_points(2, f"approach1 curve {i}", tokens=c["tokens"], loss=c["loss"])
    n = float(c["n_params"])
    if not np.isfinite(n) or n <= 0:
      raise ValueError(f"approach1 curve {i}: n_params={n!r} must be > 0.")
    prepared.append({"n_params": n, "tokens": cols["tokens"], "loss": cols["loss"],
                     "compute": np.asarray(c.get("compute", 6.0 * n * cols["tokens"]))})
  env = lower_envelope(prepared, "compute", num)
  if len(np.unique(env["n_params"])) < 2:
    raise ValueError("approach1: one model size wins at every compute budget; the envelope "
                     "needs runs of several sizes whose curves cross.")
  out = {"flops": env["x"], "loss": env["loss"], "n_opt": env["n_params"],
         "d_opt": env["x"] / (6.0 * env["n_params"])}
  out.update(_optimal_power_fit(env["x"], env["n_params"]))
  return out


def isoflop_parabola(n_params, loss) -> dict:
  """Fits loss = k2 (log N)^2 + k1 log N + k0 on one IsoFLOP profile; vertex = N_opt."""
  cols = check_points(3, "isoflop_parabola", n_params=n_params, loss=loss)
  ln = np.log(cols["n_params"])
  if len(np.unique(ln)) < 3:
    raise ValueError("isoflop_parabola: a parabola needs at least 3 different model sizes "
                     "on the profile.")
  k2, k1, k0 = np.polyfit(ln, cols["loss"], 2)
  if k2 <= 0:
    raise ValueError("isoflop_parabola: the profile curves downwards (no minimum); add "
                     "smaller and larger models around the best one.")
  log_opt = -k1 / (2.0 * k2)
  return {"coef": [float(k2), float(k1), float(k0)], "n_opt": float(np.exp(log_opt)),
          "loss_min": float(k0 - k1 * k1 / (4.0 * k2)),
          "inside": bool(ln.min() <= log_opt <= ln.max())}


def approach2(flops, n_params, loss) -> dict:
  """Approach 2: one parabola per IsoFLOP profile (runs grouped by their budget `flops`).

  Returns {"profiles": [{"flops", "n_opt", "d_opt", "loss_min", "coef", "inside"}...]}
  and, with two or more profiles, the exponents a, b and coefficients n_coef, d_coef.
  """
  cols = check_points(3, "approach2", flops=flops, n_params=n_params, loss=loss)
  profiles = []
  for c in np.unique(cols["flops"]):
    sel = cols["flops"] == c
    try:
      p = isoflop_parabola(cols["n_params"][sel], cols["loss"][sel])
    except ValueError as e:
      raise ValueError(f"approach2, profile C={c:.3g}: {e}") from None
    profiles.append({"flops": float(c), "d_opt": float(c / (6.0 * p["n_opt"])), **p})
  out = {"profiles": profiles}
  if len(profiles) >= 2:
    out.update(_optimal_power_fit(np.array([p["flops"] for p in profiles]),
                                  np.array([p["n_opt"] for p in profiles])))
  return out


def bootstrap(fit_fn: Callable[..., dict], columns: dict, *, samples: int = 100,
              level: float = 0.9, seed: int = 0, keys=None) -> dict:
  """Percentile bootstrap intervals of a fit's scalar outputs, resampling rows.

  `fit_fn(**columns_resampled) -> dict`; rows of every array in `columns` are
  drawn with replacement. Resamples whose fit raises ValueError are skipped
  (counted in "failed"). Returns {key: (low, high)} plus "samples" and "failed".
  """
  arrays = {k: np.asarray(v) for k, v in columns.items()}
  n = len(next(iter(arrays.values())))
  rng = np.random.default_rng(seed)
  draws, failed = [], 0
  for _ in range(samples):
    idx = rng.integers(0, n, n)
    try:
      res = fit_fn(**{k: v[idx] for k, v in arrays.items()})
    except ValueError:
      failed += 1
      continue
    draws.append({k: v for k, v in res.items()
                  if isinstance(v, (float, int)) and (keys is None or k in keys)})
  out: dict = {"samples": len(draws), "failed": failed}
  if not draws:
    return out
  lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
  for k in draws[0]:
    vals = np.array([d[k] for d in draws if k in d], np.float64)
    out[k] = (float(np.percentile(vals, lo)), float(np.percentile(vals, hi)))
  return out
