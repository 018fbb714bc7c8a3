"""Kaplan-style power laws: L(N), L(D), L(C) and the joint L(N, D) (Kaplan et al. 2020).

    L(x)    = (x_c / x) ** alpha_x                        x = N, D or C  (eq. 1.1-1.3)
    L(N, D) = ((N_c / N) ** (alpha_N / alpha_D) + D_c / D) ** alpha_D      (eq. 1.5)

Single-variable laws are straight lines in log-log space and are fitted by least
squares on (log x, log L); the joint law by least squares on log L. Inputs are
checked first: `check_points` raises ValueError naming the bad argument.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize


def check_points(min_points: int, what: str = "fit", **columns) -> dict:
  """Float arrays of equal length, all finite and > 0, at least `min_points` of them.

  Raises ValueError with one line naming the argument and the fix.
  """
  out, length = {}, None
  for name, values in columns.items():
    x = np.asarray(values, np.float64).reshape(-1)
    if length is not None and len(x) != length:
      raise ValueError(f"{what}: {name} has {len(x)} values but the other inputs have "
                       f"{length}; pass one value per run.")
    length = len(x)
    bad = ~np.isfinite(x)
    if bad.any():
      raise ValueError(f"{what}: {name} has {int(bad.sum())} non-finite value(s) (NaN/Inf) "
                       f"at index {int(np.argmax(bad))}; drop failed or diverged runs first.")
    if (x <= 0).any():
      i = int(np.argmax(x <= 0))
      raise ValueError(f"{what}: {name}[{i}]={float(x[i])!r} must be > 0 (power laws are fitted "
                       "in log space).")
    out[name] = x
  if length is not None and length < min_points:
    raise ValueError(f"{what}: {length} point(s) given but the fit has {min_points - 1} free "
                     f"parameter(s); it needs at least {min_points}. Run more sizes/budgets.")
  return out


def fit_power_law(x, loss, name: str = "x") -> dict:
  """Fits L = (x_c / x) ** alpha by least squares in log-log space.

  Returns {"alpha", "x_c", "r2"}; "alpha" > 0 means loss falls with x.
  """
  cols = check_points(3, f"fit_power_law({name})", x=x, loss=loss)
  lx, ly = np.log(cols["x"]), np.log(cols["loss"])
  if np.ptp(lx) == 0:
    raise ValueError(f"fit_power_law({name}): every x is {cols['x'][0]}; it needs at least "
                     "two different values.")
  slope, intercept = np.polyfit(lx, ly, 1)
  alpha = -slope
  resid = ly - (slope * lx + intercept)
  r2 = 1.0 - resid.var() / ly.var() if ly.var() > 0 else 1.0
  x_c = float(np.exp(intercept / alpha)) if alpha != 0 else float("inf")
  return {"alpha": float(alpha), "x_c": x_c, "r2": float(r2)}


def power_law(x, fit: dict):
  """L(x) of a `fit_power_law` result."""
  return (fit["x_c"] / np.asarray(x, np.float64)) ** fit["alpha"]


def kaplan_joint(n, d, fit: dict):
  """L(N, D) of a `fit_kaplan_joint` result (Kaplan et al. eq. 1.5)."""
  n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
  ratio = fit["alpha_n"] / fit["alpha_d"]
  return ((fit["n_c"] / n) ** ratio + fit["d_c"] / d) ** fit["alpha_d"]


def fit_kaplan_joint(n_params, n_tokens, loss) -> dict:
  """Fits L(N, D) = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D by least squares on log L.

  Returns {"alpha_n", "alpha_d", "n_c", "d_c", "rmse_log"}. Several starts; the best is kept.
  """
  cols = check_points(5, "fit_kaplan_joint", n_params=n_params, n_tokens=n_tokens, loss=loss)
  ln, ld, ly = np.log(cols["n_params"]), np.log(cols["n_tokens"]), np.log(cols["loss"])

  def residual(theta):
    log_nc, log_dc, alpha_n, alpha_d = theta
    ratio = alpha_n / alpha_d
    # log((N_c/N)^ratio + D_c/D), as a log-sum-exp for stability.
    inner = np.logaddexp(ratio * (log_nc - ln), log_dc - ld)
    return alpha_d * inner - ly

  best = None
  for log_nc in (ln.mean(), ln.mean() + 5, ln.mean() + 15):
    for log_dc in (ld.mean() - 5, ld.mean(), ld.mean() + 5):
      for alpha in (0.1, 0.5):
        sol = optimize.least_squares(
            residual, [log_nc, log_dc, alpha, alpha],
            bounds=([-np.inf, -np.inf, 1e-4, 1e-4], [np.inf, np.inf, 10.0, 10.0]))
        if best is None or sol.cost < best.cost:
          best = sol
  log_nc, log_dc, alpha_n, alpha_d = best.x
  return {"alpha_n": float(alpha_n), "alpha_d": float(alpha_d), "n_c": float(np.exp(log_nc)),
          "d_c": float(np.exp(log_dc)),
          "rmse_log": float(np.sqrt(np.mean(best.fun ** 2)))}


def lower_envelope(curves, x_key: str, num: int = 200) -> dict:
  """The minimum loss over training curves at each of `num` log-spaced x values.

  `curves` is a list of dicts with "n_params" (a number) and 1-D arrays
  "tokens", "compute" and "loss" (one entry per logged step); `x_key` is
  "compute" or "tokens". At each x, every curve that spans x is interpolated
  (linearly in log x) and the lowest wins. The range starts where every curve
  has begun (the latest first point), so small models are not the optimum
  merely because larger ones have not logged yet. Returns arrays "x", "loss",
  "n_params" (the winner's N) and "index" (the winner's position in `curves`).
  """
  if not curves:
    raise ValueError("lower_envelope: no training curves given; run the sweep first.")
  lo = max(float(np.min(c[x_key])) for c in curves)
  hi = max(float(np.max(c[x_key])) for c in curves)
  if not (lo > 0 and hi > lo):
    raise ValueError(f"lower_envelope: {x_key} must be > 0 and span a range; got [{lo}, {hi}].")
  grid = np.geomspace(lo, hi, num)
  best = np.full(num, np.inf)
  who = np.full(num, -1)
  for i, c in enumerate(curves):
    x, y = np.log(np.asarray(c[x_key], np.float64)), np.asarray(c["loss"], np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]
    inside = (np.log(grid) >= x[0]) & (np.log(grid) <= x[-1])
    val = np.interp(np.log(grid), x, y)
    better = inside & (val < best)
    best[better], who[better] = val[better], i
  keep = who >= 0
  n = np.array([curves[i]["n_params"] for i in who[keep]], np.float64)
  return {"x": grid[keep], "loss": best[keep], "n_params": n, "index": who[keep]}
