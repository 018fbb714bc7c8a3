"""The ChatGPT pipeline's report: report.json, report.md and PNG curves."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from llmrl.train.metrics import read_jsonl  # noqa: E402

STAGES = ("pretrain", "sft", "rlhf")


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


def write(workdir: str, evals: dict, rm: dict, ppo_final: dict, kl_target: float) -> dict:
  """Writes report.json / report.md / PNGs; returns the report dict.

  rm: the reward model's "heldout_accuracy" (held-out prompts) and, when some
  facts were held out whole, "unseen_fact_accuracy".
  """
  report = {stage: {k: evals[stage][k] for k in ("true_reward", "known_accuracy",
                                                 "hallucination_rate")}
            for stage in STAGES if stage in evals}
  report["reward_model"] = {k: rm[k] for k in ("heldout_accuracy", "unseen_fact_accuracy")
                            if k in rm}
  report["ppo"] = {"kl_mean": ppo_final.get("ppo/kl_mean"), "kl_target": kl_target,
                   "final_beta": ppo_final.get("ppo/beta")}
  report["calibration"] = {s: evals[s]["calibration"] for s in STAGES if s in evals}
  plots = [plot_losses(workdir), plot_ppo(workdir, kl_target)]
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  lines = ["# ChatGPT pipeline report", "",
           "| stage | true reward | known-fact accuracy | hallucination rate |",
           "|---|---:|---:|---:|"]
  for s in STAGES:
    if s in report:
      r = report[s]
      lines.append(f"| {s} | {r['true_reward']:.3f} | {r['known_accuracy']:.3f} | "
                   f"{r['hallucination_rate']:.3f} |")
  unseen = rm.get("unseen_fact_accuracy")
  lines += ["", f"Reward model held-out pairwise accuracy: **{rm['heldout_accuracy']:.3f}**"
            + (f" (prompts about facts never ranked in training: {unseen:.3f})"
               if unseen is not None else ""), "",
            f"PPO: mean KL to the reference {report['ppo']['kl_mean']:.3f} nats "
            f"(target {kl_target}), final β {report['ppo']['final_beta']:.4f}", "",
            "## Calibration (how often the model hedges)", "",
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
