"""Scaling laws: sweeps of ordinary pretraining runs, Kaplan and Chinchilla fits, plots.

    fit_chinchilla(n_params, n_tokens, loss) -> {"E", "A", "B", "alpha", "beta", "a", "b", ...}
    compute_optimal(flops, fit) -> {"n_opt", "d_opt", "a", "b"}

`llmrl.scaling.sweep` plans and runs sweeps (experiments/sweep.py),
`llmrl.scaling.plots` draws the figures.
"""

from llmrl.scaling.chinchilla import (PUBLISHED, approach1, approach2, bootstrap,
                                      chinchilla_loss, compute_optimal, fit_chinchilla,
                                      isoflop_parabola)
from llmrl.scaling.laws import (check_points, fit_kaplan_joint, fit_power_law, kaplan_joint,
                                lower_envelope, power_law)

__all__ = ["PUBLISHED", "approach1", "approach2", "bootstrap", "check_points", "chinchilla_loss",
           "compute_optimal", "fit_chinchilla", "fit_kaplan_joint", "fit_power_law",
           "isoflop_parabola", "kaplan_joint", "lower_envelope", "power_law"]
