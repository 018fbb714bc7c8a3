"""PNG figures of a sweep: loss vs compute with the envelope, IsoFLOP parabolas, N_opt/D_opt."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llmrl.scaling import chinchilla  # noqa: E402


def loss_vs_compute(extras: dict, path: str) -> None:
  """Each run's training curve (loss vs C = 6 N D_t), coloured by N, and the envelope."""
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  curves = extras["curves"]
  sizes = sorted({c["n_params"] for c in curves})
  cmap = plt.get_cmap("viridis")
  for c in curves:
    color = cmap(sizes.index(c["n_params"]) / max(len(sizes) - 1, 1))
    ax.plot(6 * c["n_params"] * c["tokens"], c["loss"], color=color, lw=1, alpha=0.8)
  for i, n in enumerate(sizes):
    ax.plot([], [], color=cmap(i / max(len(sizes) - 1, 1)), label=f"N={n / 1e3:.0f}k")
  a1 = extras.get("approach1", {})
  if "flops" in a1:
    ax.plot(a1["flops"], a1["loss"], "k--", lw=2, label="envelope (approach 1)")
  ax.set_xscale("log")
  ax.set_xlabel("compute C = 6ND (FLOPs)")
  ax.set_ylabel("train loss (nats/token)")
  ax.set_title("Training curves and the minimum-loss envelope")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def isoflop(fits: dict, extras: dict, path: str) -> None:
  """Loss vs N on each IsoFLOP profile with its fitted parabola and vertex."""
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  key = fits["loss"]
  rows = [r for r in extras["rows"] if r["kind"] == "isoflop"]
  profiles = {p["flops"]: p for p in fits.get("approach2", {}).get("profiles", [])}
  for i, c in enumerate(sorted({r["budget"] for r in rows})):
    sel = [r for r in rows if r["budget"] == c]
    n = np.array([r["n_total"] for r in sel], np.float64)
    color = f"C{i}"
    ax.plot(n, [r[key] for r in sel], "o", color=color, label=f"C={c:.1e}")
    p = profiles.get(c)
    if p:
      grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 100)
      ax.plot(grid, np.polyval(p["coef"], np.log(grid)), "-", color=color, lw=1)
      ax.plot([p["n_opt"]], [p["loss_min"]], "*", color=color, ms=12)
  ax.set_xscale("log")
  ax.set_xlabel("parameters N")
  ax.set_ylabel(key.replace("_", " "))
  ax.set_title("IsoFLOP profiles (approach 2)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def optimal(fits: dict, extras: dict, path: str) -> None:
  """Predicted N_opt and D_opt vs C for each approach, with the published exponents.

  The published lines (Kaplan a = 0.73; Chinchilla a = 0.50) show slopes only:
  they pass through the approach-3 prediction (or the first available fit) at
  the middle of the plotted range, since coefficients do not transfer between
  data sets and tokenizers.
  """
  preds = fits.get("compute_optimal", {})
  if not preds:
    return
  all_c = [p["flops"] for ps in preds.values() for p in ps]
  grid = np.geomspace(min(all_c) / 3, max(all_c), 50)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  styles = {"approach1": "C0", "approach2": "C1", "approach3": "C2"}
  a1 = extras.get("approach1", {})
  for col, (ax, key) in enumerate(zip(axes, ("n_opt", "d_opt"))):
    if "flops" in a1:
      ax.plot(a1["flops"], a1[key], ".", color="C0", ms=3, alpha=0.4, label="envelope points")
    for p in fits.get("approach2", {}).get("profiles", []):
      ax.plot(p["flops"], p[key], "s", color="C1", ms=6)
    anchor = None
    for name, color in styles.items():
      fit = fits.get(name, {})
      if "error" in fit or "a" not in fit or name not in preds:
        continue
      y = chinchilla.compute_optimal(grid, fit)[key]
      expo = fit["a"] if key == "n_opt" else fit["b"]
      ax.plot(grid, y, "-", color=color, label=f"{name}: exponent {expo:.2f}")
      if anchor is None or name == "approach3":
        anchor = (grid[len(grid) // 2], y[len(grid) // 2])
    if anchor is not None:
      for ref, ls in (("kaplan", ":"), ("chinchilla_1", "--")):
        e = chinchilla.PUBLISHED[ref]["a" if key == "n_opt" else "b"]
        ax.plot(grid, anchor[1] * (grid / anchor[0]) ** e, ls, color="gray",
                label=f"{ref} (published) {e:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("N_opt (parameters)" if col == 0 else "D_opt (tokens)")
    ax.legend(fontsize=7)
  fig.suptitle("Compute-optimal model size and data")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_all(fits: dict, extras: dict, workdir: str) -> list[str]:
  """Draws every figure the data allow into workdir; returns their paths."""
  paths = []
  for name, fn in (("loss_vs_compute.png", lambda p: loss_vs_compute(extras, p)),
                   ("isoflop.png", lambda p: isoflop(fits, extras, p)),
                   ("optimal.png", lambda p: optimal(fits, extras, p))):
    path = os.path.join(workdir, name)
    fn(path)
    if os.path.exists(path):
      paths.append(path)
  return paths
