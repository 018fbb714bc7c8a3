"""Runs experiments as a user would (subprocesses) for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import REPO


def env(devices: int = 1) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["PYTHONUNBUFFERED"] = "1"
  return e


def command(experiment: str, config: str, workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", f"experiments.{experiment}", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def run(experiment, config, workdir, *overrides, devices=1, timeout=600, check=True):
  """Runs to completion; returns the CompletedProcess (stderr holds the log)."""
  proc = subprocess.run(command(experiment, config, workdir, *overrides), cwd=REPO,
                        env=env(devices), capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}:\n{proc.stderr[-4000:]}")
  return proc


def start(experiment, config, workdir, *overrides, devices=1, log=None):
  """Starts without waiting (for kill tests and multi-process runs)."""
  return subprocess.Popen(command(experiment, config, workdir, *overrides), cwd=REPO,
                          env=env(devices), stdout=subprocess.DEVNULL,
                          stderr=log or subprocess.DEVNULL, text=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
