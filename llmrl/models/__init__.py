"""Model zoo: pure linen modules.

Decoder-only transformers live in `gpt`, the BERT encoder in `bert`, the T5
encoder-decoder in `t5`; shared blocks in `layers` and `attention`; routed
experts (any family's `moe=MoEConfig(...)`) in `moe`.
"""

from llmrl.models.accounting import (
  bert_flops_per_token,
  count_params,
  count_params_from_config,
  flops_per_token,
  t5_flops_per_example,
)
from llmrl.models.bert import Bert, BertConfig
from llmrl.models.gpt import GPT, GPTConfig, init_cache, scan_params, unscan_params
from llmrl.models.moe import MoE, MoEConfig
from llmrl.models.t5 import T5, T5Config

__all__ = [
  "GPT",
  "GPTConfig",
  "init_cache",
  "scan_params",
  "unscan_params",
  "Bert",
  "BertConfig",
  "T5",
  "T5Config",
  "MoE",
  "MoEConfig",
  "count_params",
  "count_params_from_config",
  "flops_per_token",
  "bert_flops_per_token",
  "t5_flops_per_example",
]
