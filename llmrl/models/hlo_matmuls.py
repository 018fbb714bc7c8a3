"""The matmuls a compiled XLA program runs, read from its optimised HLO text.

Used by `benchmarks/matmul_floor.py` to time exactly the matmuls of llmrl's
train step on their own, and so to bound how fast the whole step can be on a
backend whose matmul kernels are the limit.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

# `%name = f32[8,256]{1,0} opcode(%a, %b), attrs` (ROOT and layouts optional).
_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<dtype>\w+)\[(?P<dims>[\d,]*)\]"
    r"(?:\{[^}]*\})?\s+(?P<op>[\w\-]+)\((?P<args>[^)]*)\)(?P<attrs>.*)$")
_DIMS = re.compile(r"(lhs_batch|lhs_contracting|rhs_batch|rhs_contracting)_dims=\{([\d,]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


class Matmul(NamedTuple):
  """One dot as a batched [batch, m, k] x [batch, k, n] matmul."""
  batch: int
  m: int
  k: int
  n: int
  dtype: str  # the operands' element type, e.g. "f32", "bf16"
  op_name: str  # the jax source op that produced it (HLO metadata), "" if none

  @property
  def flops(self) -> int:
    return 2 * self.batch * self.m * self.k * self.n

  @property
  def shape(self) -> tuple[int, int, int, int, str]:
    return (self.batch, self.m, self.k, self.n, self.dtype)


def _ints(text: str) -> list[int]:
  return [int(t) for t in text.split(",") if t]


def compiled_matmuls(hlo_text: str) -> list[Matmul]:
  """Every `dot` instruction of an HLO module's text, fused or not, in order.

  `hlo_text` is `jax.jit(f).lower(...).compile().as_text()` (or an
  `--xla_dump_to` file). A dot inside a while-loop body is listed once, not
  once per iteration; a program with loops (e.g. `scan_layers=True`) needs
  its trip counts applied by the caller.
  """
  shapes: dict[str, tuple[str, list[int]]] = {}
  dots = []
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    shapes[m["name"]] = (m["dtype"], _ints(m["dims"]))
    if m["op"] == "dot":
      dots.append(m)
  out = []
  for m in dots:
    args = [a.strip().split()[-1].lstrip("%") for a in m["args"].split(",")]
    if len(args) != 2 or any(a not in shapes for a in args):
      raise ValueError(f"cannot resolve the operands of dot {m['name']!r}: {m['args']!r}")
    (ldt, lhs), (_, rhs) = shapes[args[0]], shapes[args[1]]
    dims = {k: _ints(v) for k, v in _DIMS.findall(m["attrs"])}
    lb, lc = dims.get("lhs_batch", []), dims.get("lhs_contracting", [])
    rb, rc = dims.get("rhs_batch", []), dims.get("rhs_contracting", [])
    lfree = [d for i, d in enumerate(lhs) if i not in lb and i not in lc]
    rfree = [d for i, d in enumerate(rhs) if i not in rb and i not in rc]
    name = _OP_NAME.search(m["attrs"])
    out.append(Matmul(batch=math.prod(lhs[i] for i in lb), m=math.prod(lfree),
                      k=math.prod(lhs[i] for i in lc), n=math.prod(rfree), dtype=ldt,
                      op_name=name[1] if name else ""))
  return out
