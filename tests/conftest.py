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
