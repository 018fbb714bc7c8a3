"""Multi-host start-up: `jax.distributed.initialize` from flags or environment."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("llmrl")


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """Joins a multi-process run; a no-op for a single process.

  Values left empty are read from LLMRL_COORDINATOR, LLMRL_NUM_PROCESSES and
  LLMRL_PROCESS_ID. On CPU the collectives go through gloo. On TPU pods and
  SLURM clusters `jax.distributed.initialize()` finds everything by itself:
  set num_processes=-1 for that.
  """
  coordinator_address = coordinator_address or os.environ.get("LLMRL_COORDINATOR", "")
  num_processes = num_processes or int(os.environ.get("LLMRL_NUM_PROCESSES", "0"))
  if process_id < 0:
    process_id = int(os.environ.get("LLMRL_PROCESS_ID", "-1"))
  if num_processes == -1:
    jax.distributed.initialize()
    return
  if num_processes <= 1:
    return
  if not coordinator_address or process_id < 0:
    raise ValueError(
        f"a run of {num_processes} processes needs --coordinator_address=host:port "
        "and --process_id (or LLMRL_COORDINATOR / LLMRL_PROCESS_ID).")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  log.info("process %d of %d joined %s (%d local / %d global devices)", process_id,
           num_processes, coordinator_address, jax.local_device_count(),
           jax.device_count())
