"""TFDS builders (array_record, no TensorFlow) for the builtin datasets, and opening splits.

`synthetic_world` and `text_files` are `tfds.core.GeneratorBasedBuilder`s
written with `file_format="array_record"` into `cache_dir/tfds`. All splits of
a builder share one feature dict (TFDS has one per dataset): text splits fill
only `text` and `kind`; the structured synthetic_world splits (sft,
preferences, eval_known, eval_unknown; see qa.py) fill the fields listed in
`SPLIT_FIELDS` and leave the others empty, and `read_examples` returns just
those. TFDS writes into an `incomplete.*` directory and renames it when
done, so a half-written dataset never looks complete; an exclusive file lock
in `cache_dir/locks` makes two processes that race to prepare the same
dataset wait for each other (the second one then reuses the result). Any other name goes to
`tfds.data_source(name)` (downloaded by TFDS, needs network the first time;
not tested offline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from typing import Iterator, Sequence

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from llmrl.data import config as config_lib
from llmrl.data import documents, qa, textfiles, world
from llmrl.data.config import DataConfigError

_TEXT = tfds.features.Text
_FEATURES = {"text": _TEXT(), "kind": _TEXT()}
# The synthetic_world feature dict: text splits fill text and kind only.
_WORLD_FEATURES = {
  **_FEATURES,
  "prompt": _TEXT(),
  "response": _TEXT(),
  "subject": _TEXT(),
  "relation": _TEXT(),
  "object": _TEXT(),
  "known": tfds.features.Scalar(np.bool_),
  "fact_id": _TEXT(),
  "alternatives": tfds.features.Sequence(_TEXT()),
  "responses": tfds.features.Sequence(_TEXT()),
  "scores": tfds.features.Sequence(tfds.features.Scalar(np.float32)),
  "ranks": tfds.features.Sequence(tfds.features.Scalar(np.int32)),
}
_FACT_FIELDS = ("subject", "relation", "object", "known", "fact_id", "alternatives")
_QA_FIELDS = ("prompt", "response", "text", *_FACT_FIELDS)
# Fields each synthetic_world split fills, in the order read_examples returns them.
SPLIT_FIELDS = {
  "pretrain": ("text", "kind"),
  "validation": ("text", "kind"),
  "sft": _QA_FIELDS,
  "eval_known": _QA_FIELDS,
  "eval_unknown": _QA_FIELDS,
  "preferences": ("prompt", "text", *_FACT_FIELDS, "responses", "scores", "ranks"),
}
_EMPTY = {
  "prompt": "",
  "response": "",
  "subject": "",
  "relation": "",
  "object": "",
  "known": False,
  "fact_id": "",
  "alternatives": [],
  "responses": [],
  "scores": [],
  "ranks": [],
}
# TFDS warnings that are expected for builders with per-config names.
_QUIET = ("Using custom data configuration", "has no dataset_info.json")


class _QuietFilter(logging.Filter):
  """Drops the expected TFDS warnings above from the absl logger."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(q in record.getMessage() for q in _QUIET)


logging.getLogger("absl").addFilter(_QuietFilter())


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builtin builders: no downloads, no checksum files.

  `code_path` is overridden because TFDS' default needs the optional
  `importlib_resources` package (an etils[epath] extra) to locate the file.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """Holds an exclusive lock on `path` (created if missing) for the with-block."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a+") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclasses.dataclass
class WorldConfig(tfds.core.BuilderConfig):
  """Builder config of one generated world: seed, people, responses per prompt, wordings."""

  world_seed: int = 0
  num_people: int = 48
  num_responses: int = 4
  prompts_per_fact: int = 1
  eval_wordings: int = 1
  filler_scale: float = 1.0

  @property
  def text_id(self) -> str:
    """Names what the text splits depend on (not the preference settings).

    Tokenizers are keyed by it.
    """
    return f"seed{self.world_seed}_people{self.num_people}" + _filler_suffix(self.filler_scale)


def _filler_suffix(filler_scale: float) -> str:
  return "" if filler_scale == 1.0 else f"_f{filler_scale:g}"


class SyntheticWorld(_LocalBuilder):
  """The generated fictional world: facts in paraphrases, arithmetic, lists, stories, Q/A.

  Bump VERSION whenever world.py, documents.py, qa.py, chat.py or labeler.py
  change the generated data: prepared copies, tokenizers and token caches are
  keyed by it.
  """

  VERSION = tfds.core.Version("4.0.0")
  RELEASE_NOTES = {
    "1.0.0": "pretrain and validation splits.",
    "2.0.0": "sft, preferences, eval_known and eval_unknown splits (structured fields).",
    "3.0.0": "preferences ask about rl facts that sft never drills (qa.fact_groups).",
    "4.0.0": "fact_id and alternatives fields; scores from the ungameable labeler; eval_wordings.",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description="Deterministic generated world (see llmrl/data/world.py and qa.py).",
      features=tfds.features.FeaturesDict(_WORLD_FEATURES),
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    w = world.build_world(c.world_seed, c.num_people)
    splits = {s: self._generate_examples(self._documents(w, s, c.filler_scale))
              for s in ("pretrain", "validation")}
    for s in qa.QA_SPLITS:
      splits[s] = self._generate_examples(self._qa(w, s, c.eval_wordings))
    splits["preferences"] = self._generate_examples(
      self._preferences(w, c.num_responses, c.prompts_per_fact)
    )
    return splits

  @staticmethod
  def _documents(w, split, filler_scale):
    for kind, text in documents.pretrain_documents(w, split, filler_scale=filler_scale):
      yield {**_EMPTY, "text": text, "kind": kind}

  @staticmethod
  def _qa(w, split, eval_wordings):
    for ex in qa.qa_examples(w, split, eval_wordings):
      yield {**_EMPTY, **ex, "kind": "qa"}

  @staticmethod
  def _preferences(w, num_responses, prompts_per_fact):
    for ex in qa.preference_examples(w, num_responses, prompts_per_fact):
      yield {**_EMPTY, **ex, "kind": "preference"}

  def _generate_examples(self, records):
    for i, record in enumerate(records):
      yield f"{i:09d}", record


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
  """Builder config of a set of local text files (the name is their fingerprint)."""

  files: tuple[str, ...] = ()
  text_key: str = "text"
  validation_fraction: float = 0.02
  skip_bad_utf8: bool = False


class TextFiles(_LocalBuilder):
  """Local .txt / .jsonl files split deterministically into train and validation."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "train and validation splits."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description="Local text files (see llmrl/data/textfiles.py).",
      features=tfds.features.FeaturesDict(_FEATURES),
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    docs = textfiles.split_documents(
      list(c.files), c.text_key, c.skip_bad_utf8, c.validation_fraction
    )
    return {split: self._generate_examples(split, d) for split, d in docs.items() if d}

  def _generate_examples(self, split, docs):
    for i, text in enumerate(docs):
      yield f"{split}-{i:09d}", {"text": text, "kind": "text"}


@dataclasses.dataclass
class DocSource:
  """Random access to the texts of one prepared split.

  `key` names the dataset version and config; tokenizers and token caches
  derived from this split are stored under it.
  """

  key: str
  split: str
  source: Sequence
  text_key: str = "text"

  def __len__(self) -> int:
    return len(self.source)

  def texts(self, start: int = 0, stop: int | None = None, chunk: int = 4096) -> Iterator[str]:
    """Yields the texts of records start..stop in order (read in chunks)."""
    stop = len(self) if stop is None else min(stop, len(self))
    for lo in range(start, stop, chunk):
      idx = list(range(lo, min(lo + chunk, stop)))
      getitems = getattr(self.source, "__getitems__", None)
      records = getitems(idx) if getitems else [self.source[i] for i in idx]
      for r in records:
        if isinstance(r, dict) and self.text_key not in r:
          raise DataConfigError(
            f"{self.key}/{self.split} has no feature {self.text_key!r}; set "
            f"config.data.text_key to one of {sorted(r)}"
          )
        value = r[self.text_key] if isinstance(r, dict) else r
        if isinstance(value, np.ndarray):
          value = value.item()
        yield value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _builder(cfg) -> tfds.core.GeneratorBasedBuilder:
  data_dir = os.path.join(os.path.expanduser(cfg.cache_dir), "tfds")
  if cfg.name == "synthetic_world":
    n, k = config_lib.world_num_people(cfg.world_size), cfg.get("num_responses", 4)
    q, w = cfg.get("prompts_per_fact", 1), cfg.get("eval_wordings", 1)
    f = float(cfg.get("filler_scale", 1.0))
    bc = WorldConfig(
      name=f"seed{cfg.world_seed}_people{n}_k{k}"
      + (f"_q{q}" if q != 1 else "")
      + (f"_w{w}" if w != 1 else "")
      + _filler_suffix(f),
      filler_scale=f,
      world_seed=cfg.world_seed,
      num_people=n,
      num_responses=k,
      prompts_per_fact=q,
      eval_wordings=w,
    )
    return SyntheticWorld(config=bc, data_dir=data_dir, file_format="array_record")
  paths = config_lib.split_files(cfg.files)
  fp = textfiles.fingerprint(paths, cfg.text_key, cfg.validation_fraction, cfg.skip_bad_utf8)
  bc = TextFilesConfig(
    name=f"files_{fp}",
    files=tuple(paths),
    text_key=cfg.text_key,
    validation_fraction=cfg.validation_fraction,
    skip_bad_utf8=cfg.skip_bad_utf8,
  )
  return TextFiles(config=bc, data_dir=data_dir, file_format="array_record")


def prepare(cfg) -> tfds.core.GeneratorBasedBuilder:
  """Prepares a builtin dataset once (locked, atomic) and returns its builder."""
  builder = _builder(cfg)
  lock = os.path.join(
    os.path.expanduser(cfg.cache_dir), "locks", f"{builder.name}-{builder.builder_config.name}.lock"
  )
  with file_lock(lock):
    builder = _builder(cfg)  # Re-read: another process may have finished meanwhile.
    if not builder.is_prepared():
      start = time.time()
      print(
        f"[llmrl.data] preparing {builder.name}/{builder.builder_config.name} "
        f"in {builder.data_dir} ...",
        flush=True,
      )
      bars = tfds.core.utils.tqdm_utils._active  # Restored below.
      tfds.display_progress_bar(False)
      try:
        builder.download_and_prepare()
      except OSError:
        # Another host (without a shared lock) renamed its copy first.
        builder = _builder(cfg)
        if not builder.is_prepared():
          raise
      finally:
        tfds.display_progress_bar(bars)
      print(f"[llmrl.data] prepared {builder.name} in {time.time() - start:.1f}s", flush=True)
  return builder


def open_split(cfg, split: str | None = None) -> DocSource:
  """Prepares (if needed) and opens a split of the configured dataset as a DocSource."""
  split = split or cfg.split
  if cfg.name in ("synthetic_world", "text_files"):
    if cfg.name == "text_files" and split == "pretrain":
      split = "train"
    builder = prepare(cfg)
    if split not in builder.info.splits:
      raise DataConfigError(
        f"config.data.split={split!r}: {cfg.name} has no documents in "
        f"that split; use one of {list(builder.info.splits)}"
      )
    bc = builder.builder_config
    key = f"{builder.name}-{getattr(bc, 'text_id', bc.name)}-v{builder.version}"
    return DocSource(key, split, builder.as_data_source(split=split))
  if split == "pretrain":
    split = "train"
  data_dir = os.path.join(os.path.expanduser(cfg.cache_dir), "tfds")
  source = tfds.data_source(cfg.name, split=split, data_dir=data_dir, download=True)
  key = cfg.name.replace("/", "_").replace(":", "-")
  return DocSource(key, split, source, text_key=cfg.text_key)


def _python(value):
  """A decoded TFDS value as plain Python (str, bool, float, int or a list of them)."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_python(v) for v in value.tolist()] if value.ndim else _python(value.item())
  if isinstance(value, (list, tuple)):
    return [_python(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def read_examples(cfg, split: str) -> list[dict]:
  """All examples of a synthetic_world split as dicts of its SPLIT_FIELDS (plain Python)."""
  if cfg.name != "synthetic_world":
    raise DataConfigError(
      f"examples of split {split!r} need config.data.name='synthetic_world' (they are "
      f"generated from its fact table); {cfg.name!r} has text only: use open_split or lm_batches"
    )
  if split not in SPLIT_FIELDS:
    raise DataConfigError(
      f"split={split!r} is not a split of synthetic_world; use one of {list(SPLIT_FIELDS)}"
    )
  source = prepare(cfg).as_data_source(split=split)
  records = source.__getitems__(list(range(len(source)))) if len(source) else []
  fields = SPLIT_FIELDS[split]
  return [{k: _python(r[k]) for k in fields} for r in records]
