"""Test set-up: 8 fake CPU devices (sharding tests) and a shared data cache."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
  """One prepared-data cache for every test that runs experiments."""
  return str(tmp_path_factory.mktemp("llmrl_cache"))


# The smoke run's stage settings: PPO-ptx on and knowledge-aware SFT, as in the default.
CHATGPT_TINY_OVERRIDES = ("--config.rlhf.ppo.ptx_coef=0.5", "--config.sft.decline_below=0.1")


@pytest.fixture(scope="session")
def chatgpt_tiny(data_cache, tmp_path_factory):
  """A finished `chatgpt:tiny` workdir (pretrain, sft, reward_model, rlhf, report), run once
  as a user would; its stdout/stderr are in workdir/run.log."""
  from tests import launcher
  wd = str(tmp_path_factory.mktemp("chatgpt_tiny") / "cg")
  out = launcher.run("chatgpt", "configs/chatgpt.py:tiny", wd, f"--config.cache_dir={data_cache}",
                     *CHATGPT_TINY_OVERRIDES)
  with open(os.path.join(wd, "run.log"), "w") as f:
    f.write(out.stderr)
  return wd
