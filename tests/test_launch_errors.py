"""Bad launches end with one readable line and a non-zero exit, before compiling."""

import pytest

from llmrl.config import ConfigError, check_key
from configs import pretrain
from tests import launcher

CONFIG = "configs/pretrain.py:tiny"


def one_line_error(proc, *needles):
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error:") or "Flags parsing error" in l]
  assert errors, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  for n in needles:
    assert n in errors[0], (n, errors[0])
  return errors[0]


@pytest.mark.parametrize("args,needles", [
    (["--config.train.learnin_rate=1"], ["config.train.learnin_rate"]),
    (["--config.optim.learnin_rate=1"], ["optim.learning_rate"]),  # close match listed
    (["--config.model.num_heads=3"], ["num_heads=3", "d_model=64"]),
    (["--config.optim.name=adamm"], ["adamw"]),
    (["--config.mesh.data=3"], ["mesh"]),
    (["--config.train.global_batch_size=6", "--config.train.microbatches=4"],
     ["microbatches=4"]),
    (["--config.data.tokenizer=/nonexistent/tok.model"], ["/nonexistent/tok.model"]),
    (["--config.train.steps=abc"], ["steps"]),
])
def test_bad_launch(tmp_path, data_cache, args, needles):
  proc = launcher.run("pretrain", CONFIG, str(tmp_path), f"--config.data.cache_dir={data_cache}",
                      *args, check=False, timeout=120)
  one_line_error(proc, *needles)


def test_missing_config_file(tmp_path):
  proc = launcher.run("pretrain", "configs/nope.py", str(tmp_path), check=False)
  one_line_error(proc, "configs/nope.py")


def test_batch_not_divisible_by_data_parallel(tmp_path, data_cache):
  proc = launcher.run("pretrain", CONFIG, str(tmp_path), f"--config.data.cache_dir={data_cache}",
                      "--config.train.global_batch_size=6", devices=4, check=False)
  one_line_error(proc, "data-parallel size 4")


def test_check_key_lists_close_matches():
  c = pretrain.get_config("tiny")
  check_key(c, "train.seq_len")
  with pytest.raises(ConfigError, match="Did you mean: train.seq_len"):
    check_key(c, "train.seq_lne")
