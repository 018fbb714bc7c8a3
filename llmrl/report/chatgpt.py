"""The ChatGPT pipeline's report: report.json, report.md and PNG curves."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from llmrl.train.metrics import read_jsonl  # noqa: E402

STAGES = ("pretrain", "sft", "rlhf")
BASELINES = ("always_decline", "oracle_decline")


def _curves(workdir: str, stage: str, keys: list[str]) -> dict:
  path = os.path.join(workdir, stage, "metrics.jsonl")
  recs = read_jsonl(path) if os.path.exists(path) else []
  return {k: [(r["step"], r[k]) for r in recs if k in r] for k in keys}


def plot_losses(workdir: str) -> str:
  """Training loss of pretrain, SFT and the reward model, one panel each."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  for ax, (stage, key) in zip(axes, (("pretrain", "train/loss"), ("sft", "train/loss"),
                                     ("reward_model", "train/loss"))):
    pts = _curves(workdir, stage, [key])[key]
    if pts:
      ax.plot(*zip(*pts))
    ax.set_title(f"{stage}: {key}")
    ax.set_xlabel("step")
  fig.tight_layout()
  path = os.path.join(workdir, "losses.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_ppo(workdir: str, kl_target: float) -> str:
  """PPO curves: score, true reward, KL (with target), entropy, clip fraction, value loss."""
  keys = ["ppo/score", "ppo/true_reward", "ppo/kl_mean", "ppo/entropy", "train/clip_frac",
          "train/value_loss"]
  curves = _curves(workdir, "rlhf", keys)
  fig, axes = plt.subplots(2, 3, figsize=(13, 6))
  for ax, key in zip(axes.flat, keys):
    if curves[key]:
      ax.plot(*zip(*curves[key]))
    if key == "ppo/kl_mean":
      ax.axhline(kl_target, color="gray", ls="--", label="target")
      ax.legend()
    ax.set_title(key)
    ax.set_xlabel("iteration")
  fig.tight_layout()
  path = os.path.join(workdir, "ppo.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


RATES = ("answer_rate", "accuracy_when_answering", "known_accuracy",
         "known_accuracy_when_answering", "hallucination_rate")
SUMMARY_KEYS = ("true_reward", "true_reward_ci", *RATES, *(f"{k}_ci" for k in RATES),
                "num_questions", "num_facts")
ROWS = STAGES + BASELINES
BREAK_EVEN = 0.8  # answering pays only above 80% confidence (labeler.py)


def targets(report: dict) -> list[tuple[str, bool, str]]:
  """The pipeline's claims (issue 23, item 4) checked against the measured figures:
  (claim, holds, evidence)."""
  rl, sft, dec = report["rlhf"], report["sft"], report["always_decline"]
  rm, kl = report["reward_model"], report["ppo"]
  ci = lambda r: f"{r['true_reward']:.3f} [{r['true_reward_ci'][0]:.3f}, {r['true_reward_ci'][1]:.3f}]"  # noqa: E731,E501
  out = [("RLHF true reward above always-decline (0)", rl["true_reward"] > dec["true_reward"],
          f"RLHF {ci(rl)} vs 0"),
         ("RLHF true reward above SFT's", rl["true_reward"] > sft["true_reward"],
          f"RLHF {ci(rl)} vs SFT {ci(sft)}" + _paired(rl)),
         (f"RLHF known-fact accuracy when answering >= {BREAK_EVEN}",
          rl["known_accuracy_when_answering"] >= BREAK_EVEN,
          f"{rl['known_accuracy_when_answering']:.3f}"),
         ("RLHF hallucination rate below SFT's",
          rl["hallucination_rate"] < sft["hallucination_rate"],
          f"{rl['hallucination_rate']:.3f} vs {sft['hallucination_rate']:.3f}"),
         ("mean KL within 2x its target", kl["kl_mean"] <= 2 * kl["kl_target"],
          f"{kl['kl_mean']:.3f} vs target {kl['kl_target']}")]
  if "unseen_fact_accuracy" in rm:
    out.append(("RM unseen-fact accuracy above the surface-only ranking",
                rm["unseen_fact_accuracy"] > rm["surface_baseline_unseen_accuracy"],
                f"{rm['unseen_fact_accuracy']:.3f} vs {rm['surface_baseline_unseen_accuracy']:.3f}"))
  return out


def write(workdir: str, evals: dict, rm: dict, ppo_final: dict, kl: dict,
          kl_target: float) -> dict:
  """Writes report.json / report.md / PNGs; returns the report dict.

  evals: per stage (pretrain, sft, rlhf) the result of `rlhf.evaluate.evaluate`, and the
  baselines (always_decline, oracle_decline) summarized on the same questions. rm: the reward
  model's "heldout_accuracy", "unseen_fact_accuracy" (when facts were held out whole) and
  their "surface_baseline_*" accuracies. kl: `pipeline.kl_summary` of the PPO run.
  """
  report = {name: {k: evals[name][k] for k in SUMMARY_KEYS} for name in ROWS if name in evals}
  if "minus_sft" in evals.get("rlhf", {}):
    report["rlhf"]["minus_sft"] = evals["rlhf"]["minus_sft"]
  report["reward_model"] = dict(rm)
  report["ppo"] = {**kl, "kl_target": kl_target, "final_beta": ppo_final.get("ppo/beta")}
  report["calibration"] = {s: evals[s]["calibration"] for s in STAGES if s in evals}
  checks = targets(report)
  report["targets"] = {claim: held for claim, held, _ in checks}
  plots = [plot_losses(workdir), plot_ppo(workdir, kl_target)]
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  n, facts = report["sft"]["num_questions"], report["sft"]["num_facts"]
  lines = ["# ChatGPT pipeline report", "",
           f"Greedy answers to {n} held-out questions ({facts} facts: eval_known + "
           "eval_unknown), scored by the labeler (+1 right, +0.5 hedged right, 0 "
           "\"I don't know\", -2 hedged wrong, -4 wrong). Intervals: bootstrap 90% over "
           "facts (a fact asked in several wordings is resampled whole).", "",
           "Rates are given with their 90% intervals too.", "",
           "| policy | true reward [90% CI] | answer rate | accuracy when answering | "
           "known-fact accuracy | known acc. when answering | hallucination rate | questions |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
  for name in ROWS:
    if name in report:
      r = report[name]
      cells = [f"{r['true_reward']:.3f} [{r['true_reward_ci'][0]:.3f}, "
               f"{r['true_reward_ci'][1]:.3f}]"]
      cells += [_fmt(r[k], r[f"{k}_ci"]) for k in RATES]
      lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['num_questions']} |")
  lines += ["", "always_decline answers \"I don't know.\" to everything; oracle_decline keeps "
            "SFT's answer when it is right and declines otherwise (the best a perfectly "
            "calibrated SFT policy could do).", "", "## Reward model", "",
            "| pairs | reward model | surface-only ranking (decline > hedged > plain) | prompts |",
            "|---|---:|---:|---:|"]
  for key, label in (("heldout_accuracy", "held-out prompts (facts also ranked in training)"),
                     ("unseen_fact_accuracy", "facts never ranked in training")):
    if key in rm:
      surface = rm.get(SURFACE[key], float("nan"))
      lines.append(f"| {label} | {rm[key]:.3f} | {surface:.3f} | {rm.get(COUNTS[key], '')} |")
  p = report["ppo"]
  lines += ["", f"PPO: KL to the reference {p['kl_mean']:.3f} nats on average over the "
            f"{p['kl_iterations']} iterations that trained the policy, {p['kl_last']:.3f} at "
            f"the last (target {kl_target}); final β {p['final_beta']:.4f}", "",
            "## Targets", "", "| claim | holds | measured |", "|---|---|---|"]
  lines += [f"| {claim} | {'yes' if held else '**no**'} | {ev} |" for claim, held, ev in checks]
  lines += ["", "## Calibration (how often the model hedges)", "",
            "| stage | hedged when right | hedged when wrong | right | wrong |",
            "|---|---:|---:|---:|---:|"]
  for s, c in report["calibration"].items():
    lines.append(f"| {s} | {c['hedged_when_right']:.2f} | {c['hedged_when_wrong']:.2f} | "
                 f"{c['n_right']} | {c['n_wrong']} |")
  lines += ["", "## Sample chats: SFT (before RLHF) vs RLHF (after)", ""]
  for before, after in zip(evals.get("sft", {}).get("samples", []),
                           evals.get("rlhf", {}).get("samples", [])):
    lines += [f"**User:** {before['prompt']}  ",
              f"SFT: {before['answer'] or '(empty)'}  ",
              f"RLHF: {after['answer'] or '(empty)'}  ",
              f"(reference: {before['gold']})", ""]
  lines += ["## Curves", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                for p in plots]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return report


SURFACE = {"heldout_accuracy": "surface_baseline_heldout_accuracy",
           "unseen_fact_accuracy": "surface_baseline_unseen_accuracy"}
COUNTS = {"heldout_accuracy": "heldout_prompts", "unseen_fact_accuracy": "unseen_fact_prompts"}


def _paired(rl: dict) -> str:
  if "minus_sft" not in rl:
    return ""
  d = rl["minus_sft"]
  return (f"; paired difference {d['difference']:+.3f} [{d['difference_ci'][0]:+.3f}, "
          f"{d['difference_ci'][1]:+.3f}]")


def _fmt(x: float, ci: list | None = None) -> str:
  if x != x:
    return "n/a"
  return f"{x:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and ci[0] == ci[0] else "")
