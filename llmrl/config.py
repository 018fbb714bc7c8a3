"""Config helpers: validation with one-line errors that name the field and the fix.

Every check here runs before anything is compiled, so a bad launch fails in
seconds with a readable message instead of an XLA traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
  """A config value is wrong; the message names the key and how to fix it."""


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """All dotted leaf and node keys of a ConfigDict (e.g. 'train.learning_rate')."""
  keys = []
  for k, v in config.items():
    full = f"{prefix}{k}"
    keys.append(full)
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(flat_keys(v, full + "."))
  return keys


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
  """Raises ConfigError if `dotted` is not a key of `config`, listing close matches."""
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = flat_keys(config)
      close = difflib.get_close_matches(dotted, known, n=3, cutoff=0.6)
      hint = f" Did you mean: {', '.join(close)}?" if close else (
          " Known top-level keys: " + ", ".join(sorted(config.keys())) + ".")
      raise ConfigError(f"unknown config key 'config.{dotted}'.{hint}")
    node = node[part]


def check_enum(name: str, value: Any, allowed: Iterable[Any]) -> None:
  """Raises ConfigError unless value is one of `allowed`."""
  allowed = list(allowed)
  if value not in allowed:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"config.{name}={value!r} is not one of {allowed}{hint}.")


def check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
  """Raises ConfigError unless value > 0 (or >= 0 with allow_zero)."""
  ok = value >= 0 if allow_zero else value > 0
  if not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"config.{name}={value!r} must be {bound}.")


def check_divides(div_name: str, div: int, num_name: str, num: int,
                  fix: str = "") -> None:
  """Raises ConfigError unless `div` divides `num`."""
  if div <= 0 or num % div:
    msg = f"{div_name}={div} does not divide {num_name}={num}"
    raise ConfigError(msg + (f"; {fix}" if fix else "") + ".")


def check_file(name: str, path: str) -> None:
  """Raises ConfigError if a configured path does not exist."""
  if path and not os.path.exists(os.path.expanduser(path)):
    raise ConfigError(f"config.{name}={path!r}: no such file or directory; "
                      "check the path or leave it empty.")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/file.py[:arg]' the way config_flags does, with clear errors."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec}: config file {path!r} does not exist "
                      "(expected e.g. configs/pretrain.py:tiny).")
  module_spec = importlib.util.spec_from_file_location("_llmrl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config={spec}: {path} defines no get_config(arg).")
  return module.get_config(arg) if arg else module.get_config()


def override_keys(argv: list[str], flag: str = "config") -> list[str]:
  """The dotted keys of '--config.a.b=v' / '--config.a.b v' / '--noconfig.x' overrides."""
  keys = []
  for a in argv:
    for pre in (f"--{flag}.", f"-{flag}.", f"--no{flag}."):
      if a.startswith(pre):
        keys.append(a[len(pre):].split("=", 1)[0])
  return keys


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON-friendly dict of a ConfigDict (for workdir/config.json)."""
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out[k] = config_to_dict(v)
    elif isinstance(v, (int, float, str, bool, type(None))):
      out[k] = v
    elif isinstance(v, (list, tuple)):
      out[k] = list(v)
    else:
      out[k] = str(v)
  return out


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the resolved config as workdir/config.json (process 0 only)."""
  import json

  import jax
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
