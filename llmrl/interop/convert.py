"""Convert a Hugging Face checkpoint folder into an llmrl one (orbax params + config.json).

    python -m llmrl.interop.convert --hf_path=DIR --out=DIR [--dtype=bfloat16]

writes
    OUT/config.json   {"format": "llmrl.interop.convert/1", "family": "gpt" | "bert" | "t5",
                       "config": {GPTConfig / BertConfig / T5Config fields}, "source": ...}
    OUT/params/       the params as an orbax (StandardCheckpointer) pytree
and `llmrl.interop.convert.load(OUT) -> (model, params)` reads it back with
the same logits as `llmrl.interop.hf.load(DIR)`. Works for every model_type
`hf.load` supports (gpt2, llama, bert, t5). The library defines no flags; the
argument parser lives in `main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn

from llmrl.models import bert as bert_lib
from llmrl.models import t5 as t5_lib
from llmrl.models.gpt import GPT, GPTConfig

FORMAT = "llmrl.interop.convert/1"
FAMILIES = {
  "gpt": (GPTConfig, GPT),
  "bert": (bert_lib.BertConfig, bert_lib.Bert),
  "t5": (t5_lib.T5Config, t5_lib.T5),
}


def _family(cfg) -> str:
  for name, (config_cls, _) in FAMILIES.items():
    if isinstance(cfg, config_cls):
      return name
  raise TypeError(f"{type(cfg).__name__} is not one of the llmrl model configs")


def config_to_dict(cfg) -> dict:
  """JSON-able fields of a model config (dtypes as names)."""
  out = {}
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    out[field.name] = jnp.dtype(value).name if field.name in ("dtype", "param_dtype") else value
  return out


def abstract_params(cfg):
  """Unboxed ShapeDtypeStruct tree of the params of the model `cfg` describes."""
  family = _family(cfg)
  if family == "bert":
    return bert_lib.param_shapes(cfg)
  if family == "t5":
    return t5_lib.param_shapes(cfg)
  ids = jnp.zeros((1, 1), jnp.int32)
  return nn.unbox(jax.eval_shape(GPT(cfg).init, {"params": jax.random.key(0)}, ids))["params"]


def save(model, params, out: str, source: str = "") -> None:
  """Writes out/config.json and out/params (orbax) for `load`."""
  out = os.path.abspath(os.path.expanduser(out))
  cfg = model.config
  if os.path.exists(os.path.join(out, "params")):
    raise FileExistsError(f"{out}/params already exists; choose an empty --out directory")
  os.makedirs(out, exist_ok=True)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.join(out, "params"), jax.tree.map(np.asarray, params))
  ckpt.wait_until_finished()
  meta = {"format": FORMAT, "family": _family(cfg), "config": config_to_dict(cfg), "source": source}
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)


def load(path: str, **config_overrides):
  """(model, params) from a folder written by `save` / the CLI; overrides replace config fields."""
  path = os.path.abspath(os.path.expanduser(path))
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path}: no config.json; convert a checkpoint with "
                            "python -m llmrl.interop.convert --hf_path=... --out=...")  # fmt: skip
  with open(file) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT or meta.get("family") not in FAMILIES:
    raise ValueError(f"{file} is not an llmrl converted checkpoint (format {FORMAT})")
  config_cls, model_cls = FAMILIES[meta["family"]]
  cfg = config_cls(**{**meta["config"], **config_overrides})
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract_params(cfg)
  )
  params = ocp.StandardCheckpointer().restore(os.path.join(path, "params"), target)
  return model_cls(cfg), params


def convert(hf_path: str, out: str, **config_overrides):
  """hf.load(hf_path) then save(..., out); returns (model, params)."""
  from llmrl.interop import hf

  model, params = hf.load(hf_path, **config_overrides)
  save(model, params, out, source=os.path.abspath(os.fspath(hf_path)))
  return model, params


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m llmrl.interop.convert", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--hf_path", required=True, help="HF folder: config.json + *.safetensors")
  parser.add_argument("--out", required=True, help="output folder (config.json + params/)")
  parser.add_argument("--dtype", default="", help="compute dtype recorded in the config")
  args = parser.parse_args(argv)
  overrides = {"dtype": args.dtype} if args.dtype else {}
  try:
    model, params = convert(args.hf_path, args.out, **overrides)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"wrote {type(model).__name__} ({n:,} params) to {os.path.abspath(args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
