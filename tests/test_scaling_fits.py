"""Scaling-law fits on data drawn from known laws (reference values from the laws themselves)."""

import numpy as np
import pytest

from llmrl import scaling
from llmrl.scaling import chinchilla

# Hoffmann et al. 2022's fitted law (eq. 10) as the ground truth.
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _law(n, d):
  return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def _brute_force_optimum(c):
  """argmin over N of L(N, C / 6N) on a fine log grid (numpy, no closed form)."""
  n = np.geomspace(1e5, 1e14, 400_001)
  return n[np.argmin(_law(n, c / (6 * n)))]


def _samples(num=300, noise=0.01, seed=0):
  rng = np.random.default_rng(seed)
  n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), num))
  d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), num))
  return n, d, _law(n, d) * np.exp(rng.normal(0, noise, num))


def test_approach3_recovers_the_law_from_noisy_data():
  n, d, loss = _samples()
  fit = scaling.fit_chinchilla(n, d, loss)
  assert abs(fit["alpha"] - TRUE["alpha"]) < 0.02
  assert abs(fit["beta"] - TRUE["beta"]) < 0.02
  assert abs(fit["E"] - TRUE["E"]) < 0.02
  s = TRUE["alpha"] + TRUE["beta"]
  assert fit["a"] == pytest.approx(fit["beta"] / (fit["alpha"] + fit["beta"]))
  assert abs(fit["a"] - TRUE["beta"] / s) < 0.02


def test_approach3_is_exact_on_noiseless_data():
  n, d, _ = _samples(num=60, seed=1)
  fit = scaling.fit_chinchilla(n, d, _law(n, d))
  for k in ("E", "alpha", "beta"):
    assert fit[k] == pytest.approx(TRUE[k], rel=1e-3)


def test_compute_optimal_matches_brute_force_minimum():
  for c in (1e18, 1e21, 1e24):
    got = scaling.compute_optimal(c, TRUE)
    want = _brute_force_optimum(c)
    assert got["n_opt"] == pytest.approx(want, rel=2e-3)
    assert got["d_opt"] == pytest.approx(c / (6 * want), rel=2e-3)
    assert got["a"] == pytest.approx(0.28 / 0.62)
    assert got["b"] == pytest.approx(0.34 / 0.62)


def test_approach2_recovers_the_vertex_of_an_exact_parabola():
  n = np.geomspace(1e6, 1e9, 7)
  n_star = 3.3e7
  loss = 0.07 * (np.log(n) - np.log(n_star)) ** 2 + 2.5
  p = scaling.isoflop_parabola(n, loss)
  assert p["n_opt"] == pytest.approx(n_star, rel=1e-9)
  assert p["loss_min"] == pytest.approx(2.5, abs=1e-9)
  assert p["inside"]


def test_approach2_recovers_the_known_optimum_of_isoflop_profiles():
  flops, ns, losses = [], [], []
  budgets = (1e19, 1e20, 1e21, 1e22)
  for c in budgets:
    centre = _brute_force_optimum(c)
    for n in centre * np.geomspace(0.25, 4.0, 9):
      flops.append(c)
      ns.append(n)
      losses.append(_law(n, c / (6 * n)))
  fit = scaling.approach2(flops, ns, losses)
  for c, prof in zip(budgets, fit["profiles"]):
    assert prof["flops"] == c
    assert prof["n_opt"] == pytest.approx(_brute_force_optimum(c), rel=0.05)
  assert fit["a"] == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), abs=0.02)
  assert fit["a"] + fit["b"] == pytest.approx(1.0)
  pred = scaling.compute_optimal(1e20, fit)
  assert pred["n_opt"] == pytest.approx(fit["profiles"][1]["n_opt"], rel=0.1)


def test_approach1_envelope_follows_the_optimal_size():
  # Idealised curves: 40 sizes, each "trained" to every D_t along a curve L(N, D_t).
  sizes = np.geomspace(1e7, 1e10, 40)
  curves = [{"n_params": n, "tokens": np.geomspace(1e8, 1e12, 200),
             "loss": _law(n, np.geomspace(1e8, 1e12, 200))} for n in sizes]
  fit = scaling.approach1(curves)
  want_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
  assert fit["a"] == pytest.approx(want_a, abs=0.05)
  # The envelope's loss is the smallest of all curves at each C.
  c = fit["flops"][len(fit["flops"]) // 2]
  best = min(_law(n, c / (6 * n)) for n in sizes if 1e8 <= c / (6 * n) <= 1e12)
  assert fit["loss"][len(fit["flops"]) // 2] == pytest.approx(best, rel=2e-3)


def test_kaplan_power_laws_recover_exponents():
  n = np.geomspace(1e5, 1e9, 12)
  fit = scaling.fit_power_law(n, (8.8e13 / n) ** 0.076)
  assert fit["alpha"] == pytest.approx(0.076, rel=1e-6)
  assert fit["x_c"] == pytest.approx(8.8e13, rel=1e-4)
  rng = np.random.default_rng(0)
  nn, dd = np.exp(rng.uniform(11, 21, 80)), np.exp(rng.uniform(18, 25, 80))
  true = {"alpha_n": 0.076, "alpha_d": 0.095, "n_c": 8.8e13, "d_c": 5.4e13}
  joint = scaling.fit_kaplan_joint(nn, dd, scaling.kaplan_joint(nn, dd, true))
  assert joint["alpha_n"] == pytest.approx(0.076, abs=2e-3)
  assert joint["alpha_d"] == pytest.approx(0.095, abs=2e-3)


def test_bootstrap_interval_contains_the_truth():
  n, d, loss = _samples(num=120, seed=3)
  ci = scaling.bootstrap(lambda n_params, n_tokens, loss: scaling.fit_chinchilla(
      n_params, n_tokens, loss, num_starts=1), {"n_params": n, "n_tokens": d, "loss": loss},
      samples=12, keys=("alpha", "beta", "E"))
  assert ci["samples"] == 12
  for k in ("alpha", "beta", "E"):
    lo, hi = ci[k]
    assert lo <= TRUE[k] <= hi and hi - lo < 0.2


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_params=[0.0] + [1e6] * 9), r"n_params\[0\]=0.0 must be > 0"),
    (dict(n_tokens=[-1.0] + [1e9] * 9), r"n_tokens\[0\]=-1.0 must be > 0"),
    (dict(loss=[np.nan] + [3.0] * 9), r"loss has 1 non-finite value"),
    (dict(n_params=[1e6] * 5, n_tokens=[1e9] * 5, loss=[3.0] * 5), r"needs at least 6"),
    (dict(loss=[3.0] * 9), r"loss has 9 values but the other inputs have 10"),
])
def test_bad_inputs_get_clear_errors(kwargs, match):
  args = dict(n_params=np.geomspace(1e6, 1e8, 10), n_tokens=np.geomspace(1e9, 1e10, 10),
              loss=np.linspace(3.0, 2.5, 10))
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    scaling.fit_chinchilla(**args)


def test_more_bad_inputs():
  with pytest.raises(ValueError, match="needs at least 3"):
    scaling.fit_power_law([1.0, 2.0], [3.0, 2.0])
  with pytest.raises(ValueError, match="no minimum"):
    scaling.isoflop_parabola([1e6, 1e7, 1e8], [3.0, 3.5, 3.0])
  with pytest.raises(ValueError, match=r"profile C=1e\+20.*3 different model sizes"):
    scaling.approach2([1e20] * 3, [1e6, 1e6, 1e7], [3.0, 2.9, 3.1])
  with pytest.raises(ValueError, match="flops must be finite and > 0"):
    scaling.compute_optimal(-1.0, TRUE)
  with pytest.raises(ValueError, match="both must be > 0"):
    scaling.compute_optimal(1e20, {**TRUE, "alpha": 0.0})
  with pytest.raises(ValueError, match="fit needs keys"):
    scaling.compute_optimal(1e20, {"E": 1.0})
  with pytest.raises(ValueError, match="several sizes"):
    chinchilla.approach1([{"n_params": 1e6, "tokens": [1e6, 1e7], "loss": [3.0, 2.0]}])
