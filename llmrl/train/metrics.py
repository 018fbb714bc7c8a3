"""One metrics writer: metrics.jsonl, TensorBoard event files and a progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

try:
  from tensorboardX import SummaryWriter
except ImportError:  # pragma: no cover - tensorboardX is a declared dependency
  SummaryWriter = None


def format_duration(seconds: float) -> str:
  """'1h02m', '3m05s', '12s'."""
  if not math.isfinite(seconds):
    return "?"
  s = int(round(seconds))
  if s >= 3600:
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
  if s >= 60:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s}s"


def _si(x: float) -> str:
  for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= div:
      return f"{x / div:.1f}{unit}"
  return f"{x:.0f}"


def read_jsonl(path: str) -> list[dict]:
  """All records of a metrics.jsonl file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Writes scalar metrics on the primary process; other processes write nothing."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if SummaryWriter is not None:
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (left by a run killed after its last checkpoint)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)

  def last_record(self) -> dict:
    """The newest record of metrics.jsonl ({} if none), e.g. for a run resumed at its end."""
    if not self.enabled or not os.path.exists(self.path):
      return {}
    recs = [r for r in read_jsonl(self.path) if any(k.startswith(("train/", "ppo/")) for k in r)]
    return recs[-1] if recs else {}

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A periodic console line: step, loss, tokens/s, TFLOP/s (and MFU), ETA."""

  def __init__(self, total_steps: int, start_step: int, tokens_per_step: float,
               flops_per_step: float, peak_flops: float = 0.0, stream=None,
               enabled: bool = True, label: str = "train"):
    self.total, self.start = total_steps, start_step
    self.tokens, self.flops, self.peak = tokens_per_step, flops_per_step, peak_flops
    self.stream = stream or sys.stderr
    self.enabled, self.label = enabled, label
    self._t0 = None  # timing starts after the first (compiling) step
    self._s0 = start_step

  def start_timing(self, step: int) -> None:
    self._t0, self._s0 = time.perf_counter(), step

  def rates(self, step: int) -> dict:
    """Throughput since timing started (excludes compilation)."""
    if self._t0 is None or step <= self._s0:
      return {}
    dt = time.perf_counter() - self._t0
    steps_per_s = (step - self._s0) / dt
    out = {"perf/steps_per_s": steps_per_s,
           "perf/tokens_per_s": steps_per_s * self.tokens,
           "perf/tflops": steps_per_s * self.flops / 1e12}
    if self.peak:
      out["perf/mfu"] = steps_per_s * self.flops / self.peak
    return out

  def line(self, step: int, loss: float, name: str = "loss") -> str:
    r = self.rates(step)
    parts = [f"{self.label} step {step}/{self.total}", f"{name} {loss:.4f}"]
    if r:
      parts.append(f"{_si(r['perf/tokens_per_s'])} tok/s")
      if self.flops:
        parts.append(f"{r['perf/tflops']:.3f} TFLOP/s")
      if "perf/mfu" in r:
        parts.append(f"MFU {100 * r['perf/mfu']:.0f}%")
      eta = (self.total - step) / r["perf/steps_per_s"]
      parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)

  def report(self, step: int, loss: float, name: str = "loss") -> None:
    if self.enabled:
      print(self.line(step, loss, name), file=self.stream, flush=True)
