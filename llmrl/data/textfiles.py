"""Reading local .txt / .jsonl files into documents, with clear errors on bad input.

.txt files give one document per paragraph (blocks separated by blank lines);
.jsonl files give one document per non-blank line, the text in `text_key`.
Bytes that are not UTF-8 raise a DataConfigError naming the file and byte
offset, or, with skip_bad_utf8=True, the offending lines are dropped and
counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from typing import Iterator

from llmrl.data.config import DataConfigError

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def fingerprint(paths: list[str], *extra) -> str:
  """A short hash of file paths, sizes, mtimes and extra settings (the cache key)."""
  h = hashlib.sha1()
  for p in paths:
    st = os.stat(p)
    h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  h.update(repr(extra).encode())
  return h.hexdigest()[:16]


def decode_file(path: str, skip_bad_utf8: bool) -> tuple[str, int]:
  """Returns (text, number of skipped lines); raises naming the file and byte offset."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError as e:
    if not skip_bad_utf8:
      line = raw.count(b"\n", 0, e.start) + 1
      raise DataConfigError(
        f"{path}: invalid UTF-8 at byte offset {e.start} (line {line}); fix or "
        "re-encode the file, or set config.skip_bad_utf8=True to skip such lines"
      ) from None
  kept, skipped = [], 0
  for line in raw.split(b"\n"):
    try:
      kept.append(line.decode("utf-8"))
    except UnicodeDecodeError:
      skipped += 1
  return "\n".join(kept), skipped


def file_documents(path: str, text_key: str, skip_bad_utf8: bool) -> tuple[list[str], int]:
  """The documents of one file and the count of skipped non-UTF-8 lines."""
  text, skipped = decode_file(path, skip_bad_utf8)
  if text.startswith("\ufeff"):
    text = text[1:]  # Byte-order mark.
  docs = []
  if path.endswith(".jsonl"):
    for lineno, line in enumerate(text.split("\n"), start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataConfigError(
          f"{path} line {lineno}: not valid JSON ({e.msg}); fix the line or remove it"
        ) from None
      if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
        raise DataConfigError(
          f"{path} line {lineno}: no string field {text_key!r}; "
          "set config.data.text_key to the field holding the text"
        )
      if obj[text_key].strip():
        docs.append(obj[text_key])
  else:
    docs = [p.strip("\n") for p in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n"))]
    docs = [d for d in docs if d.strip()]
  return docs, skipped


def is_validation(path: str, index: int, fraction: float) -> bool:
  """Deterministic train/validation assignment of document `index` of `path`."""
  h = zlib.crc32(f"{os.path.basename(path)}:{index}".encode())
  return h / 2**32 < fraction


def split_documents(
  paths: list[str], text_key: str, skip_bad_utf8: bool, fraction: float
) -> dict[str, list[str]]:
  """Reads every file and returns {"train": [...], "validation": [...]}.

  Raises DataConfigError when a file has no documents or all text is
  skipped. When validation would be empty but there are >= 2 documents and
  fraction > 0, the last document goes to validation.
  """
  out: dict[str, list[str]] = {"train": [], "validation": []}
  total_skipped = 0
  for path in paths:
    docs, skipped = file_documents(path, text_key, skip_bad_utf8)
    if skipped:
      print(f"[llmrl.data] {path}: skipped {skipped} lines with invalid UTF-8", flush=True)
    total_skipped += skipped
    if not docs:
      raise DataConfigError(
        f"{path}: no text found (empty or only blank lines"
        f"{' after skipping bad UTF-8' if skipped else ''}); "
        "add text or remove it from config.data.files"
      )
    for i, doc in enumerate(docs):
      out["validation" if is_validation(path, i, fraction) else "train"].append(doc)
  if fraction > 0 and not out["validation"] and len(out["train"]) >= 2:
    out["validation"].append(out["train"].pop())
  if not out["train"]:
    raise DataConfigError(
      "config.data.files: every document went to validation; lower "
      "config.data.validation_fraction or add text"
    )
  if total_skipped:
    print(f"[llmrl.data] skipped {total_skipped} non-UTF-8 lines in total", flush=True)
  return out


def iter_validated(
  paths: list[str], text_key: str, skip_bad_utf8: bool, fraction: float, split: str
) -> Iterator[str]:
  """The documents of one split (reads and checks all files)."""
  yield from split_documents(paths, text_key, skip_bad_utf8, fraction)[split]
