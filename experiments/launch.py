"""Shared absl entry point for every experiment.

    python -m experiments.<name> --config=configs/<file>.py[:preset] --workdir=DIR \
        [--config.a.b=value ...] [--coordinator_address=host:port --num_processes=N --process_id=I]

The config file is checked before absl parses it (so a misspelt override gets
close matches instead of a traceback), and library errors that mean "bad
input" end the run with one readable line and a non-zero exit code.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from llmrl.config import ConfigError, check_key, load_config_file, override_keys

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pretrain.py:tiny.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", 0, "Processes in a multi-host run (-1: detect).")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.")

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
  """Prints one line to stderr and exits."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _config_spec(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def precheck(argv: list[str]) -> None:
  """Validates --config (file exists, loads) and every --config.x override key."""
  spec = _config_spec(argv)
  if spec is None:
    fail("--config is required, e.g. --config=configs/pretrain.py:tiny")
  if "--workdir" not in " ".join(argv):
    fail("--workdir is required: the directory for checkpoints and metrics.")
  try:
    config = load_config_file(spec)
    for key in override_keys(argv):
      check_key(config, key)
  except (ConfigError, ValueError) as e:
    fail(f"--config={spec}: {e}" if not isinstance(e, ConfigError) else str(e))


def _bad_input_errors() -> tuple[type, ...]:
  errors: list[type] = [ConfigError, FileNotFoundError]
  try:
    from llmrl.data import DataConfigError
    errors.append(DataConfigError)
  except ImportError:
    pass
  return tuple(errors)


def _setup_logging() -> None:
  """llmrl's own INFO lines to stderr; library chatter (orbax, absl) stays at WARNING."""
  import logging as pylog
  logger = pylog.getLogger("llmrl")
  if not logger.handlers:
    handler = pylog.StreamHandler(sys.stderr)
    handler.setFormatter(pylog.Formatter("llmrl %(levelname).1s %(asctime)s %(message)s",
                                         "%H:%M:%S"))
    logger.addHandler(handler)
  logger.setLevel(pylog.INFO)
  logger.propagate = False
  logging.set_verbosity(logging.WARNING)


def run(main: Callable[[object, str], object]) -> None:
  """Parses flags, joins a multi-host run, calls main(config, workdir)."""
  precheck(sys.argv)

  def _main(argv):
    del argv
    _setup_logging()
    from llmrl.train import distributed
    from llmrl.train.trainer import NonFiniteError
    try:
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)
      main(_CONFIG.value, FLAGS.workdir)
    except NonFiniteError as e:
      fail(str(e), EXIT_NONFINITE)
    except _bad_input_errors() as e:
      fail(str(e))

  app.run(_main)
