r"""Complete prompts (or chat) with a trained llmrl model or an imported Hugging Face one.

Command (a pretraining workdir; the default samples 64 tokens, T=0.8, top_p=0.95):
  python -m experiments.generate --config=configs/generate.py --workdir=/tmp/gen \
      --config.checkpoint=/tmp/pretrain --config.prompt="Alice lives in"
A Hugging Face folder (config.json + safetensors; tokenizer.model or HF tokenizer files):
  python -m experiments.generate --config=configs/generate.py --workdir=/tmp/gen \
      --config.hf_path=path/to/hf --config.prompt="Hello"
Chat (user turns from stdin, one per line, until EOF; replies end at <|end|>):
  python -m experiments.generate --config=configs/generate.py --workdir=/tmp/gen \
      --config.checkpoint=/tmp/sft --config.chat=True
Runtime: a few seconds to compile, then well under a second per prompt on a CPU
for the pretraining shapes. Prints each completion; workdir/generations.jsonl
keeps prompt, completion, token ids and log-probs. Expected: after the default
pretraining run, completions are fluent sentences about the synthetic world.

Presets (`--config=configs/generate.py:PRESET`):
  tiny   greedy, 16 new tokens: runs in seconds with configs/pretrain.py:tiny.
  beam   beam search, 4 beams, 2 returned sequences.
Decoding settings live in config.decoding (see llmrl.decoding.generate).
"""

import ml_collections


def decoding_config() -> ml_collections.ConfigDict:
  """`config.decoding`: the arguments of llmrl.decoding.generate."""
  c = ml_collections.ConfigDict()
  c.method = "sample"          # "greedy" | "sample" | "beam"
  c.max_new_tokens = 64
  c.min_new_tokens = 0         # EOS is suppressed before this many tokens
  c.temperature = 0.8          # sampling only
  c.top_k = 0                  # sampling only; 0 = off
  c.top_p = 0.95               # sampling only; 1 = off
  c.num_beams = 4              # beam only
  c.length_penalty = 1.0       # beam only: score = sum logprob / length ** length_penalty
  c.early_stopping = "false"   # beam only: "true" | "false" | "never" (transformers' meanings)
  c.num_return_sequences = 1   # sequences per prompt (sample or beam)
  return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = ""            # an llmrl training workdir: its newest checkpoint
  c.hf_path = ""               # or a Hugging Face folder (used when checkpoint is empty)
  c.tokenizer = ""             # sentencepiece .model; default: the workdir's / hf_path's own
  c.prompt = ""                # text to complete
  c.prompts_file = ""          # or a text file: one prompt per line
  c.add_bos = True             # start prompts with bos (as pretraining documents do)
  c.chat = False               # read user turns from stdin and answer them
  # Chat system prompt ("" = none); the SFT default, llmrl.data.chat.SYSTEM_PROMPT.
  c.system = "Answer, or say I don't know."
  c.seed = 0                   # sampling RNG
  c.dtype = "float32"          # compute dtype of the model ("bfloat16" halves memory)
  c.decoding = decoding_config()
  if preset == "tiny":
    c.decoding.method = "greedy"
    c.decoding.max_new_tokens = 16
  elif preset == "beam":
    c.decoding.method = "beam"
    c.decoding.num_return_sequences = 2
    c.decoding.early_stopping = "true"
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/generate.py; use tiny or beam")
  return c
