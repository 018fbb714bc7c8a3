"""Orbax checkpoints of (train state, data-iterator position) with corrupt fallback.

Orbax writes each step into a temporary directory and renames it when complete,
so a run killed mid-save leaves no step that looks finished; old steps are
removed only after a newer one is committed (max_to_keep). If the newest step
cannot be restored (files damaged after the fact), it is moved aside to
`<dir>/corrupt-<step>` (never deleted), reported, and the previous one is used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("llmrl")


def gather_json(obj: Any) -> list:
  """Every process's JSON-serialisable `obj`, in process order, on every process."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lens = multihost_utils.process_allgather(np.array([data.size], np.int32))
  buf = np.zeros(int(lens.max()), np.uint8)
  buf[:data.size] = data
  rows = multihost_utils.process_allgather(buf)  # [processes, max_len]
  return [json.loads(bytes(r[:int(n)]).decode())
          for r, n in zip(np.asarray(rows), np.asarray(lens).reshape(-1))]


class Checkpointer:
  """Saves and restores `{"state": TrainState, "data": per-process iterator states}`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: Any, data_state: Any) -> None:
    """Starts saving (asynchronously when enabled); all processes must call it."""
    per_process = gather_json(data_state)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"per_process": per_process}))
    self.manager.save(int(step), args=args, force=True)

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, Any] | None:
    """(step, state, this process's data state) of the newest good step, or None.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings: arrays
    are restored directly into that layout.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore()))
        per_process = out["data"]["per_process"]
        if len(per_process) != jax.process_count():
          raise ValueError(
              f"checkpoint was written by {len(per_process)} processes, "
              f"this run has {jax.process_count()}")
        return step, out["state"], per_process[jax.process_index()]
      except Exception as e:  # noqa: BLE001 - any damage means "try the previous one"
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    path = os.path.join(self.directory, str(step))
    reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    if jax.process_index() == 0 and os.path.exists(path):
      dest = os.path.join(self.directory, f"corrupt-{step}-{int(time.time())}")
      os.rename(path, dest)
      log.warning("checkpoint %s is unreadable (%s); moved it to %s and "
                  "falling back to the previous checkpoint.", path, reason, dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"llmrl_ckpt_aside_{step}")
    self.manager.reload()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(workdir: str, step: int | None = None) -> tuple[int, Any]:
  """(step, params) of the newest checkpoint of a training workdir (or of `step`), on
  one device.

  For initialising a later stage (SFT from pretraining, a reward model from
  SFT, ...). Raises FileNotFoundError naming the path when there is none.
  """
  directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
  steps = sorted((int(d) for d in os.listdir(directory) if d.isdigit()),
                 reverse=True) if os.path.isdir(directory) else []
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} under {directory} (it has "
                              f"{sorted(steps)}); pick one of those steps.")
    steps = [step]
  if not steps:
    raise FileNotFoundError(
        f"no checkpoint under {directory}; train that stage first or fix the path.")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  for step in steps:
    path = os.path.join(directory, str(step), "state")
    try:
      meta = checkpointer.metadata(path)
      tree = getattr(getattr(meta, "item_metadata", meta), "tree", None) or meta.item_metadata
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
      return step, checkpointer.restore(path, target)["params"]
    except Exception as e:  # noqa: BLE001 - a damaged step: try the previous one
      log.warning("cannot read %s (%s); trying an older checkpoint", path,
                  str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
  raise FileNotFoundError(f"no readable checkpoint under {directory}.")
