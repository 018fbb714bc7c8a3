"""Complete prompts or chat with a trained or imported model: see configs/generate.py."""

import json
import logging
import os
import sys

from experiments import launch


def _decode_kwargs(c) -> dict:
  """config.decoding -> keyword arguments of llmrl.decoding.generate."""
  from llmrl.config import check_enum
  check_enum("decoding.early_stopping", c.early_stopping, ("true", "false", "never"))
  kw = dict(c)
  kw["early_stopping"] = {"true": True, "false": False, "never": "never"}[c.early_stopping]
  if c.method != "beam":
    kw["num_beams"] = 1  # the beam settings only apply to beam search
  return kw


def _load(config):
  from llmrl.config import ConfigError
  from llmrl.decoding import loading
  if config.checkpoint:
    model, params, tok = loading.load_workdir(config.checkpoint, dtype=config.dtype)
    if config.tokenizer:
      from llmrl.data import load_tokenizer
      tok = load_tokenizer(config.tokenizer)
    return model, params, tok
  if config.hf_path:
    return loading.load_hf(config.hf_path, config.tokenizer, dtype=config.dtype)
  raise ConfigError(
      "give a model: --config.checkpoint=TRAINING_WORKDIR or --config.hf_path=HF_FOLDER")


def _prompts(config) -> list:
  from llmrl.config import ConfigError
  prompts = [config.prompt] if config.prompt else []
  if config.prompts_file:
    if not os.path.isfile(config.prompts_file):
      raise ConfigError(f"config.prompts_file={config.prompts_file!r} does not exist")
    with open(config.prompts_file) as f:
      prompts += [line.rstrip("\n") for line in f if line.strip()]
  if not prompts:
    raise ConfigError("nothing to complete: set --config.prompt=TEXT, --config.prompts_file=FILE "
                      "or --config.chat=True")
  return prompts


def _chat(model, params, tok, config, kwargs, log) -> None:
  from llmrl.decoding.text import ChatSession
  session = ChatSession(model, params, tok, system=config.system, seed=config.seed, **kwargs)
  log.info("chat: one user turn per line; end with EOF (Ctrl-D)")
  for line in sys.stdin:
    if not line.strip():
      continue
    try:
      answer = session.reply(line.strip())
    except ValueError as e:  # e.g. a turn longer than the context: report and go on
      print(f"error: {e}", file=sys.stderr, flush=True)
      session.turns = session.turns[:-1]
      continue
    print(f"assistant: {answer}", flush=True)


def main(config, workdir):
  import jax
  from llmrl.config import ConfigError
  from llmrl.decoding.text import complete
  from llmrl.config import write_config
  log = logging.getLogger("llmrl")
  kwargs = _decode_kwargs(config.decoding)
  write_config(config, workdir)
  model, params, tok = _load(config)
  log.info("model %s, vocab %d, max_len %d", model.config.style, model.config.vocab_size,
           model.config.max_len)
  if config.chat:
    if getattr(tok, "end_id", None) is None:
      raise ConfigError(
          f"config.chat=True needs a tokenizer with chat role markers; {tok.path} has none")
    return _chat(model, params, tok, config, kwargs, log)
  prompts = _prompts(config)
  try:
    done = complete(model, params, tok, prompts, add_bos=config.add_bos,
                    rng=jax.random.key(config.seed), **kwargs)
  except ValueError as e:  # bad lengths or settings: one line naming the config key
    msg = str(e)
    key = msg.split("=")[0]
    raise ConfigError(f"config.decoding.{msg}" if key in config.decoding else msg) from None
  with open(os.path.join(workdir, "generations.jsonl"), "a") as f:
    for c in done:
      print(f">>> {c.prompt}\n{c.prompt}{c.text}", flush=True)
      f.write(json.dumps(c._asdict()) + "\n")


if __name__ == "__main__":
  launch.run(main)
