"""The pod-shaped ChatGPT config (configs/chatgpt.py:gpt2_small) lowers on 8 fake devices.

Nothing is materialised or downloaded: parameters, optimizer state and batches
are ShapeDtypeStructs with their shardings, and the jitted train steps (the
engine's, as `trainer.train` builds them) are lowered ahead of time for the
GPT-2-small pretraining run on lm1b and for the PPO-RLHF update of a
GPT-2-small policy + critic.
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from configs import chatgpt
from llmrl.models import GPT
from llmrl.models.accounting import count_params_from_config
from llmrl.rlhf import ppo
from llmrl.rlhf.reward import ScalarHeadModel
from llmrl.tasks import lm
from llmrl.train import mesh as mesh_lib
from llmrl.train import trainer
from llmrl.train.optim import make_optimizer


def _mesh_axes(sharding) -> set:
  axes = set()
  for entry in sharding.spec:
    axes.update(entry if isinstance(entry, tuple) else (entry,))
  return axes - {None}


def test_gpt2_small_pretraining_step_lowers_sharded():
  c = chatgpt.get_config("gpt2_small").pretrain
  assert c.data.name == "lm1b" and jax.device_count() == 8
  mesh = mesh_lib.make_mesh(c.mesh)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "expert": 1}
  task, model = lm.model_task(c, c.data.vocab_size)
  n = count_params_from_config(model.config)
  # GPT-2 small's non-embedding size (Kaplan et al. 2020 count 85M for 12 x 768).
  assert 84e6 < n["non_embedding"] < 86e6, n
  lowered = trainer.lower_train_step(c, task, lm.batch_spec(c), mesh=mesh)
  text = lowered.as_text()
  assert "sharding" in text and "bf16" in text  # sharded program, bf16 compute
  # Every big matrix is sharded over fsdp (no device holds a full replica).
  tx, _ = make_optimizer(c.optim, c.train.steps)
  abstract, shardings = trainer.abstract_state(task.init_params, tx, mesh)
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.params):
    if leaf.ndim >= 2 and leaf.size >= 768 * 768:
      assert "fsdp" in _mesh_axes(leaf.sharding), (jax.tree_util.keystr(path), leaf.sharding)
  # The optimizer moments follow the params' layout.
  mu = jax.tree.leaves(abstract.opt_state, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  assert any("fsdp" in _mesh_axes(x.sharding) for x in mu if x.ndim >= 2)
  assert shardings.rng.spec == P()


def test_gpt2_small_ppo_update_lowers_sharded():
  c = chatgpt.get_config("gpt2_small")
  pc, rc = c.rlhf.ppo, c.rlhf
  model_block = c.pretrain.model
  prompt_len, new = 256, pc.max_new_tokens
  cfg = lm.make_gpt_config(model_block, c.pretrain.data.vocab_size, prompt_len + new)
  policy, critic = GPT(cfg), ScalarHeadModel(cfg)

  def init_params(rng):  # the PPO state: policy and critic (value head on its own backbone)
    x = jnp.zeros((1, prompt_len + new), jnp.int32)
    return {"policy": policy.init({"params": rng}, x)["params"],
            "critic": critic.init({"params": rng}, x)["params"]}

  mesh = mesh_lib.make_mesh(rc.mesh)
  tx, schedule = make_optimizer(rc.optim, pc.iterations * pc.epochs * pc.minibatches)
  abstract, state_sh = trainer.abstract_state(init_params, tx, mesh)
  step = trainer.jit_train_step(ppo.make_loss(policy, critic, pc, prompt_len), tx, schedule, 1,
                                mesh, state_sh)
  rows = pc.rollout_batch // pc.minibatches
  full, resp = (rows, prompt_len + new), (rows, new)
  batch = {k: jax.ShapeDtypeStruct(full, jnp.int32) for k in ("seq", "segment_ids", "positions")}
  for k in ("mask", "old_logp", "old_values", "advantages", "returns"):
    batch[k] = jax.ShapeDtypeStruct(resp, jnp.float32)
  with mesh_lib.activate(mesh):
    lowered = step.lower(abstract, batch)
  assert "sharding" in lowered.as_text()
  policy_kernel = abstract.params["policy"]["layers_0"]["mlp"]["wi"]["kernel"]
  assert policy_kernel.shape == (768, 3072) and "fsdp" in _mesh_axes(policy_kernel.sharding)
