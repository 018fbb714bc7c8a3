"""Model zoo: pure linen modules. Decoder-only transformers live in `gpt`."""

from llmrl.models.accounting import count_params, count_params_from_config, flops_per_token
from llmrl.models.gpt import GPT, GPTConfig, init_cache

__all__ = [
  "GPT",
  "GPTConfig",
  "init_cache",
  "count_params",
  "count_params_from_config",
  "flops_per_token",
]
