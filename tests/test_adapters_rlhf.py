"""PPO-RLHF with LoRA: one frozen base for policy, reference and critic; a few PPO updates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl.adapters import lora as lora_lib
from llmrl.models import GPT, GPTConfig
from llmrl.rlhf import loop, ppo
from llmrl.rlhf.reward import ScalarHeadModel
from llmrl.tasks.lm import Stage
from llmrl.train import optim
from llmrl.train.step import TrainState, make_train_step

P, T, B, END, V = 6, 5, 4, 3, 40


def _config(rank=4, targets="attn/query,attn/value"):
  c = ml_collections.ConfigDict({"seed": 0, "lora": lora_lib.default_config()})
  c.lora.rank, c.lora.targets = rank, targets
  return c


def _bytes(tree) -> int:
  return sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_rlhf_lora_shares_a_frozen_base_and_trains_adapters():
  cfg = GPTConfig(vocab_size=V, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=64)
  policy, critic = GPT(cfg), ScalarHeadModel(cfg)
  x = jnp.zeros((1, P + T), jnp.int32)
  sft_params = nn.meta.unbox(policy.init(jax.random.PRNGKey(0), x)["params"])
  host_sft = jax.tree.map(np.array, sft_params)
  # A LoRA reward model on the same SFT base, with non-zero adapters and head.
  rm_cfg = _config(rank=2, targets="attn/value")
  rm_lora = lora_lib.LoRA.from_config(critic, rm_cfg.lora, x)
  rm_ad = jax.tree.map(lambda a: a + 0.1, rm_lora.init(jax.random.PRNGKey(5)))
  head = {"kernel": jax.random.normal(jax.random.PRNGKey(2), (32, 1)), "bias": jnp.zeros((1,))}
  rm_tree = {"base": {"backbone": sft_params, "head": head}, "lora": rm_ad}
  sft = Stage(ml_collections.ConfigDict({}), cfg, None, sft_params, 1)
  rm = Stage(rm_cfg, cfg, None, rm_tree, 1)
  setup = loop.lora_setup(_config(), sft, rm, policy, critic, P + T)
  params = setup.initial()

  rng = np.random.RandomState(0)
  ids = rng.randint(5, V, (B, P)).astype(np.int32)
  mask = np.ones((B, P), np.int32)
  mask[0, :2] = 0
  tokens = rng.randint(5, V, (B, T)).astype(np.int32)
  lengths = np.array([5, 3, 2, 5], np.int32)
  seq, seg, pos, _ = ppo.sequences(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(tokens),
                                   jnp.asarray(lengths))
  sft_logits = policy.apply({"params": host_sft}, seq, pos, seg)
  # The critic starts as the reward model: same frozen base + the RM's adapters and head.
  rm_values = critic.apply({"params": rm_lora.merge(rm_tree["base"], rm_ad)}, seq, pos, seg)
  np.testing.assert_allclose(setup.forward.critic(params, seq, pos, seg), rm_values, atol=1e-5)

  c = ppo.default_config()
  scorer = jax.jit(ppo.make_scorer(policy, critic, critic, c, END, P, setup.forward))
  rm_plain = rm_lora.merge(rm_tree["base"], rm_ad)
  roll, m = scorer(params, None, rm_plain, ids, mask, tokens, lengths, jnp.float32(0.1),
                   jnp.float32(0.0))
  assert float(m["ppo/kl_mean"]) == 0.0  # B = 0: the policy starts exactly at the reference

  oc = optim.default_config()
  oc.learning_rate, oc.warmup_steps, oc.schedule = 1e-2, 0, "constant"
  tx, sched = optim.make_optimizer(oc, 10, mask=setup.mask)
  step = jax.jit(make_train_step(ppo.make_loss(policy, critic, c, P, setup.forward), tx, sched))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0))
  start = jax.device_get(params)
  for _ in range(2):
    state, metrics = step(state, dict(roll._asdict()))
    assert float(metrics["train/finite"]) == 1.0
  got = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(got["base"]), jax.tree.leaves(host_sft)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()  # the base is bitwise unchanged
  moved = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 0  # noqa: E731
  assert moved(got["policy"]["lora"]["layers_0"]["attn"]["query"]["b"],
               start["policy"]["lora"]["layers_0"]["attn"]["query"]["b"])
  assert moved(got["critic"]["head"]["kernel"], start["critic"]["head"]["kernel"])
  # Only adapters and the head have Adam moments: far less than one copy of the base.
  assert _bytes(state.opt_state) < 0.5 * _bytes(got["base"])
  # The reference is still the SFT model (adapters off); the policy has moved away from it.
  ref = setup.forward.reference(state.params, None, seq, pos, seg)
  np.testing.assert_array_equal(ref, sft_logits)
  _, m2 = scorer(state.params, None, rm_plain, ids, mask, tokens, lengths, jnp.float32(0.1),
                 jnp.float32(0.0))
  assert float(m2["ppo/kl_k3"]) > 0.0
  # Sampling runs the adapters on the fly over the shared base: the same tokens as the
  # merged policy (computed here independently with LoRA.merge).
  from llmrl import decoding
  kw = dict(max_new_tokens=4, method="greedy", eos_id=None, pad_id=0)
  got = decoding.generate(setup.sampler, setup.policy_params(state.params), ids[1:], **kw)
  pl = lora_lib.LoRA.from_config(policy, _config().lora, x)
  want = decoding.generate(policy, pl.merge(state.params["base"], state.params["policy"]["lora"]),
                           ids[1:], **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)

