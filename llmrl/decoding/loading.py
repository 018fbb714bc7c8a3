"""Models to decode from: an llmrl training workdir or a Hugging Face folder.

    model, params, tok = load_workdir("runs/pretrain")        # newest checkpoint
    model, params, tok = load_hf("path/to/hf", tokenizer="")  # + its tokenizer

A training workdir (written by llmrl.train.trainer) holds config.json (the
resolved config: `model` block and `train.seq_len`), tokenizer.model and
orbax checkpoints; llmrl.tasks.lm.load_stage reads them. Problems raise
ConfigError or FileNotFoundError naming the file and the fix.
"""

from __future__ import annotations

import os
from typing import Optional

from llmrl.config import ConfigError
from llmrl.models import GPT


def load_workdir(workdir: str, **config_overrides):
  """(GPT model, params, tokenizer) of an llmrl training workdir (newest checkpoint).

  Uses llmrl.tasks.lm.load_stage, the loader every later stage uses;
  config_overrides replace GPTConfig fields (e.g. dtype="bfloat16").
  """
  from llmrl.tasks.lm import load_stage

  stage = load_stage(workdir)
  return GPT(stage.model_config.replace(**config_overrides)), stage.params, stage.tokenizer


class HFTokenizer:
  """A transformers tokenizer with the few members decoding uses (encode/decode, special ids)."""

  def __init__(self, path: str):
    try:
      from transformers import AutoTokenizer
    except ImportError:
      raise ConfigError(
        f"{path} has no tokenizer.model; reading its Hugging Face tokenizer needs transformers "
        "(pip install -e '.[test]') or set config.tokenizer to a sentencepiece .model"
      ) from None
    self.path = path
    self.hf = AutoTokenizer.from_pretrained(path)
    self.vocab_size = len(self.hf)
    self.eos_id, self.bos_id = self.hf.eos_token_id, self.hf.bos_token_id
    self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.eos_id
    self.end_id = None  # no llmrl chat markers

  def encode(self, text: str) -> list[int]:
    return self.hf.encode(text, add_special_tokens=False)

  def decode(self, ids) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)


def load_hf(path: str, tokenizer: Optional[str] = None, **config_overrides):
  """(GPT model, params, tokenizer) of a Hugging Face folder; tokenizer: a .model path or ''."""
  from llmrl.data import load_tokenizer
  from llmrl.interop import hf

  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise ConfigError(f"config.hf_path={path!r} is not a directory (a save_pretrained folder)")
  try:
    model, params = hf.load(path, **config_overrides)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  spm = tokenizer or os.path.join(path, "tokenizer.model")
  if tokenizer or os.path.isfile(spm):
    tok = load_tokenizer(spm)
  else:
    tok = HFTokenizer(path)
  return model, params, tok
