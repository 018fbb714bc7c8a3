"""Tests of the mixture-of-experts layer (llmrl.models.moe) and its hooks in GPT/BERT/T5.

References are numpy per-token loops and hand-computed numbers, not the layer itself.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from scipy.special import erf

from llmrl.models import GPT, GPTConfig, count_params, count_params_from_config, flops_per_token
from llmrl.models.bert import Bert, BertConfig
from llmrl.models.moe import MoE, MoEConfig, route, summarize
from llmrl.models.t5 import T5, T5Config

D, F, E = 8, 12, 4


def _act(kind, x):
  if kind == "relu":
    return np.maximum(x, 0)
  if kind == "gelu_exact":
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))
  if kind in ("gelu", "geglu"):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
  if kind == "swiglu":
    return x / (1 + np.exp(-x))
  raise ValueError(kind)


def reference(params, x, k, order, kind, use_bias):
  """Per-token loop in float64: route to the top-k experts, weight and sum their FFNs."""
  p = {n: np.asarray(v, np.float64) for n, v in params.items()}
  out = np.zeros(x.shape, np.float64)
  for b in range(x.shape[0]):
    for t in range(x.shape[1]):
      v = np.asarray(x[b, t], np.float64)
      logits = v @ p["router"]
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      top = np.argsort(-probs)[:k]
      gates = probs[top] if order == "softmax_topk" else probs[top] / probs[top].sum()
      for gate, e in zip(gates, top):
        if kind in ("swiglu", "geglu"):
          h = _act(kind, v @ p["wi_gate"][e] + (p["bi_gate"][e] if use_bias else 0))
          h = h * (v @ p["wi_up"][e] + (p["bi_up"][e] if use_bias else 0))
        else:
          h = _act(kind, v @ p["wi"][e] + (p["bi"][e] if use_bias else 0))
        y = h @ p["wo"][e] + (p["bo"][e] if use_bias else 0)
        out[b, t] += gate * y
  return out


def fill(model, *args, seed=0):
  """Random params shaped like model.init's (numpy fill: no init compile), norm scales 1."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))["params"]
  rng = np.random.default_rng(seed)

  def one(path, s):
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return jnp.asarray(base + 0.1 * rng.standard_normal(s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(one, shapes)


def random_params(layer, x, seed=0):
  shapes = nn.unbox(jax.eval_shape(layer.init, jax.random.key(0), x))["params"]
  rng = np.random.default_rng(seed)
  return {n: jnp.asarray(0.5 * rng.standard_normal(s.shape), jnp.float32)
          for n, s in shapes.items()}  # fmt: skip


@pytest.mark.parametrize(
  "k,order,kind,use_bias,dispatch",
  [
    (1, "softmax_topk", "gelu", True, "einsum"),
    (1, "softmax_topk", "relu", False, "gather"),
    (2, "topk_softmax", "swiglu", False, "einsum"),
    (2, "topk_softmax", "geglu", True, "gather"),
    (2, "softmax_topk", "gelu_exact", True, "einsum"),
    (3, "topk_softmax", "gelu", False, "gather"),
  ],
)
def test_large_capacity_equals_per_token_loop(k, order, kind, use_bias, dispatch):
  x = jax.random.normal(jax.random.key(1), (3, 10, D))
  # capacity_factor E/k gives C = s: nothing can be dropped.
  cfg = MoEConfig(num_experts=E, experts_per_token=k, router_order=order, dispatch=dispatch,
                  capacity_factor_eval=E / k)  # fmt: skip
  layer = MoE(cfg, d_ff=F, kind=kind, use_bias=use_bias)
  params = random_params(layer, x)
  y, v = jax.jit(lambda p, x: layer.apply({"params": p}, x, mutable=["moe"]))(params, x)
  (stats,) = v["moe"]["stats"]
  assert float(stats["dropped_fraction"]) == 0.0
  np.testing.assert_allclose(y, reference(params, x, k, order, kind, use_bias), atol=2e-5)


def test_dropless_equals_loop_and_dispatch_modes_agree():
  x = jax.random.normal(jax.random.key(2), (2, 9, D))
  outs = []
  for dispatch in ("einsum", "gather"):
    cfg = MoEConfig(num_experts=E, experts_per_token=2, router_order="topk_softmax",
                    dropless=True, capacity_factor=0.1, dispatch=dispatch)  # fmt: skip
    layer = MoE(cfg, d_ff=F, kind="swiglu", use_bias=False)
    params = random_params(layer, x, seed=3)
    outs.append(jax.jit(lambda p, x: layer.apply({"params": p}, x, deterministic=False))(params, x))
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
  np.testing.assert_allclose(outs[0], reference(params, x, 2, "topk_softmax", "swiglu", False),
                             atol=2e-5)  # fmt: skip


def test_balancing_loss_hand_computed():
  # One group of 4 tokens, 2 experts, k=1. Logits chosen so softmax is exact:
  # token probs (expert0, expert1): (3/4, 1/4), (3/4, 1/4), (1/4, 3/4), (1/2, 1/2).
  ln3 = math.log(3.0)
  logits = jnp.array([[[ln3, 0.0], [ln3, 0.0], [0.0, ln3], [0.0, 0.0]]], jnp.float32)
  r = route(logits, k=1, capacity=4, order="softmax_topk")
  # top-1 (ties -> lower index): experts 0, 0, 1, 0 -> f = (3/4, 1/4).
  # mean probs P = ((3/4 + 3/4 + 1/4 + 1/2) / 4, (1/4 + 1/4 + 3/4 + 1/2) / 4) = (9/16, 7/16).
  # loss = E * sum f_i P_i = 2 * (3/4 * 9/16 + 1/4 * 7/16) = 2 * 34/64 = 1.0625.
  np.testing.assert_allclose(r.stats["expert_fraction"], [0.75, 0.25], atol=1e-7)
  np.testing.assert_allclose(r.stats["aux_loss"], 1.0625, atol=1e-6)
  # z-loss: log Z = log(4/3 * 3) etc: logsumexp = ln(4), ln(4), ln(4), ln(2).
  z = (3 * math.log(4.0) ** 2 + math.log(2.0) ** 2) / 4
  np.testing.assert_allclose(r.stats["z_loss"], z, atol=1e-6)
  np.testing.assert_allclose(r.gate[0, :, 0], [0.75, 0.75, 0.75, 0.5], atol=1e-6)


def test_dropped_token_accounting_is_exact():
  # 6 tokens all prefer expert 0, then expert 1 (k=2, 3 experts); capacity 2.
  s = 6
  logits = jnp.tile(jnp.array([3.0, 2.0, 0.0]), (1, s, 1))
  r = route(logits, k=2, capacity=2, order="topk_softmax")
  kept = np.asarray(r.kept[0])  # [s, k]
  # First choices fill expert 0's two slots with tokens 0, 1; second choices fill
  # expert 1 with tokens 0, 1. Tokens 2..5 lose both choices.
  np.testing.assert_array_equal(kept[:, 0], [1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(kept[:, 1], [1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(r.stats["dropped_fraction"], 8 / 12, atol=1e-7)
  np.testing.assert_allclose(r.stats["expert_fraction"], [0.5, 0.5, 0.0], atol=1e-7)

  # Through the layer: dropped tokens give exactly 0 (the block's residual passes through),
  # kept tokens equal the loop.
  x = jax.random.normal(jax.random.key(4), (1, s, D))
  cfg = MoEConfig(num_experts=3, experts_per_token=1, capacity_factor=1.0, capacity_factor_eval=1.0)
  layer = MoE(cfg, d_ff=F, kind="relu", use_bias=True)
  params = random_params(layer, x, seed=5)
  params["router"] = jnp.zeros_like(params["router"]).at[:, 0].set(1.0)
  x = jnp.abs(x)  # all router logits favour expert 0
  assert cfg.capacity(s, deterministic=True) == 2
  y, v = jax.jit(lambda p, x: layer.apply({"params": p}, x, mutable=["moe"]))(params, x)
  (stats,) = v["moe"]["stats"]
  np.testing.assert_allclose(stats["dropped_fraction"], 4 / 6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(y[0, 2:]), 0.0)
  ref = reference(params, x, 1, "softmax_topk", "relu", True)
  np.testing.assert_allclose(y[0, :2], ref[0, :2], atol=2e-5)


def test_padding_tokens_are_not_routed():
  logits = jnp.zeros((1, 4, 2)).at[..., 0].set(1.0)
  mask = jnp.array([[True, True, False, False]])
  r = route(logits, k=1, capacity=1, order="softmax_topk", token_mask=mask)
  np.testing.assert_array_equal(r.kept[0, :, 0], [True, False, False, False])
  np.testing.assert_allclose(r.stats["dropped_fraction"], 0.5, atol=1e-7)  # 1 of 2 real tokens


def test_capacity_train_eval_and_validation():
  cfg = MoEConfig(num_experts=4, experts_per_token=2, capacity_factor=1.0, capacity_factor_eval=2.0)
  assert cfg.capacity(16, deterministic=False) == 8
  assert cfg.capacity(16, deterministic=True) == 16
  assert MoEConfig(dropless=True).capacity(7, False) == 7
  with pytest.raises(ValueError, match="router_order"):
    MoEConfig(router_order="softmax_first")
  with pytest.raises(ValueError, match="experts_per_token"):
    MoEConfig(num_experts=2, experts_per_token=3)


def test_sharded_expert_layer_equals_unsharded():
  from llmrl.train import mesh as mesh_lib

  assert jax.device_count() == 8
  x = jax.random.normal(jax.random.key(6), (4, 8, D))
  for dispatch in ("einsum", "gather"):
    cfg = MoEConfig(num_experts=E, experts_per_token=2, capacity_factor=1.0, dispatch=dispatch)
    layer = MoE(cfg, d_ff=F, kind="swiglu", use_bias=False)
    boxed = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    params = random_params(layer, x, seed=7)
    apply = lambda p, x: layer.apply({"params": p}, x, deterministic=False)  # noqa: E731
    expected = jax.jit(apply)(params, x)
    c = mesh_lib.default_config()
    c.data, c.expert = 2, 4
    mesh = mesh_lib.make_mesh(c)
    shardings = mesh_lib.logical_shardings(boxed, mesh)
    with mesh_lib.activate(mesh):
      p_sharded = jax.device_put(params, shardings)
      x_sharded = jax.device_put(x, mesh_lib.batch_sharding(mesh))
      got = jax.jit(apply)(p_sharded, x_sharded)
    # each device holds one expert's kernel
    assert p_sharded["wo"].addressable_shards[0].data.shape == (1, F, D)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _gpt_cfg(**moe):
  m = MoEConfig(num_experts=4, experts_per_token=1, every=2, **moe)
  return GPTConfig(vocab_size=50, max_len=16, num_layers=4, d_model=16, num_heads=2, d_ff=32,
                   moe=m)  # fmt: skip


def test_gpt_moe_every_and_accounting():
  cfg = _gpt_cfg()
  model = GPT(cfg)
  ids = jnp.zeros((2, 8), jnp.int32)
  params = fill(model, ids)
  assert [n for n in sorted(params) if "moe" in params[n]] == ["layers_1", "layers_3"]
  assert "mlp" in params["layers_0"] and "moe" not in params["layers_0"]
  counts = count_params_from_config(cfg)
  assert counts["total"] == count_params(params)
  # k=1 experts of the dense width: active = the dense model + the routers.
  dense = count_params_from_config(cfg.replace(moe=None))
  assert counts["active"] == dense["total"] + 2 * 16 * 4
  assert counts["active_non_embedding"] == dense["non_embedding"] + 2 * 16 * 4
  assert flops_per_token(cfg, 8) == flops_per_token(cfg.replace(moe=None), 8) + 3 * 2 * 2 * 16 * 4
  logits, v = jax.jit(lambda p: model.apply({"params": p}, ids, mutable=["moe"]))(params)
  penalty, metrics = summarize(v["moe"], cfg.moe)
  assert logits.shape == (2, 8, 50)
  assert len(v["moe"]) == 2 and np.isfinite(float(penalty))
  np.testing.assert_allclose(sum(float(metrics[f"moe/expert_fraction_{i}"]) for i in range(4)), 1.0,
                             atol=1e-6)  # fmt: skip


def test_gpt_moe_remat_and_decode_consistent():
  cfg = _gpt_cfg(dropless=True)
  ids = jax.random.randint(jax.random.key(1), (2, 6), 0, 50)
  params = fill(GPT(cfg), ids)
  full = jax.jit(GPT(cfg).apply)({"params": params}, ids)
  remat = jax.jit(GPT(cfg.replace(remat="full")).apply)({"params": params}, ids)
  np.testing.assert_allclose(full, remat, atol=1e-5)
  from llmrl.models import init_cache

  dec = GPT(cfg.replace(decode=True))
  step = jax.jit(lambda p, c, t: dec.apply({"params": p, "cache": c}, t, mutable=["cache"]))
  cache = init_cache(cfg, 2)
  steps = []
  for t in range(6):
    out, v = step(params, cache, ids[:, t:t + 1])
    cache = v["cache"]
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-4)


def test_bert_and_t5_moe_layers_and_counts():
  from llmrl.models.accounting import bert_param_counts, t5_param_counts

  moe = MoEConfig(num_experts=3, experts_per_token=2, every=1)
  bcfg = BertConfig(vocab_size=40, max_len=16, num_layers=2, d_model=16, num_heads=2, d_ff=24,
                    moe=moe)  # fmt: skip
  ids = jnp.ones((2, 8), jnp.int32)
  bparams = fill(Bert(bcfg), ids)
  assert "moe" in bparams["layers_0"] and "mlp" not in bparams["layers_0"]
  assert bert_param_counts(bcfg)["total"] == count_params(bparams)
  dense_b = bert_param_counts(bcfg.replace(moe=None))
  # active: 2 experts of the dense MLP's size + router, per layer
  mlp = 2 * 16 * 24 + 24 + 16
  assert bert_param_counts(bcfg)["active"] == dense_b["total"] + 2 * (mlp + 16 * 3)
  out, v = jax.jit(lambda p: Bert(bcfg).apply({"params": p}, ids, segment_ids=ids,
                                               mutable=["moe"]))(bparams)  # fmt: skip
  assert out.shape == (2, 8, 40) and len(v["moe"]) == 2

  tcfg = T5Config(vocab_size=40, num_layers=2, d_model=16, num_heads=2, d_ff=24, style="v1_1",
                  moe=MoEConfig(num_experts=3, experts_per_token=1, every=2))  # fmt: skip
  tparams = fill(T5(tcfg), ids, ids[:, :5])
  assert "moe" in tparams["encoder"]["layers_1"] and "mlp" in tparams["encoder"]["layers_0"]
  assert "moe" in tparams["decoder"]["layers_1"]
  assert t5_param_counts(tcfg)["total"] == count_params(tparams)
  dense_t = t5_param_counts(tcfg.replace(moe=None))
  assert t5_param_counts(tcfg)["active"] == dense_t["total"] + 2 * 16 * 3
  logits, v = jax.jit(lambda p: T5(tcfg).apply({"params": p}, ids, ids[:, :5],
                                               mutable=["moe"]))(tparams)  # fmt: skip
  assert logits.shape == (2, 5, 40) and len(jax.tree.leaves(v["moe"])) > 0


def test_gather_dispatch_gradients_equal_einsum_autodiff():
  # The gather path has a hand-written backward; the einsum path is plain autodiff.
  x = jax.random.normal(jax.random.key(8), (2, 12, D))
  w = jax.random.normal(jax.random.key(9), (2, 12, D))
  grads = []
  for dispatch in ("gather", "einsum"):
    cfg = MoEConfig(num_experts=E, experts_per_token=2, capacity_factor=0.75, dispatch=dispatch)
    layer = MoE(cfg, d_ff=F, kind="geglu", use_bias=True)
    params = random_params(layer, x, seed=10)
    loss = lambda p, x: jnp.sum(w * layer.apply({"params": p}, x, deterministic=False))  # noqa: E731
    grads.append(jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x))
  assert float(jnp.abs(grads[0][1]).max()) > 0
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_expert_parallel_loss_and_grads_match_one_device():
  from llmrl.models.moe import add_to_loss
  from llmrl.objectives.lm import causal_lm_loss
  from llmrl.train import mesh as mesh_lib

  cfg = GPTConfig(vocab_size=64, max_len=8, num_layers=2, d_model=16, num_heads=2, d_ff=32,
                  moe=MoEConfig(num_experts=4, experts_per_token=2, capacity_factor=1.0))  # fmt: skip
  model = GPT(cfg)
  ids = jax.random.randint(jax.random.key(2), (8, 9), 0, 64)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jnp.ones((8, 8))}

  def loss_fn(params, batch):
    logits, aux = model.apply({"params": params}, batch["inputs"], deterministic=False,
                              mutable=["moe"])  # fmt: skip
    loss, (weight, sums) = causal_lm_loss(logits, batch["targets"], batch["weights"])
    return add_to_loss(loss, weight, sums, aux["moe"], cfg.moe)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  params = fill(model, batch["inputs"], seed=3)
  (loss, (_, sums)), grads = grad_fn(params, batch)
  c = mesh_lib.default_config()
  c.data, c.expert = 2, 4
  mesh = mesh_lib.make_mesh(c)
  boxed = jax.eval_shape(model.init, jax.random.key(0), batch["inputs"])["params"]
  shardings = mesh_lib.logical_shardings(boxed, mesh)
  with mesh_lib.activate(mesh):
    p_sharded = jax.device_put(params, shardings)
    b_sharded = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
    (loss_s, (_, sums_s)), grads_s = grad_fn(p_sharded, b_sharded)
  assert p_sharded["layers_1"]["moe"]["wi"].addressable_shards[0].data.shape[0] == 1
  np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
  for key in ("moe/aux_loss", "moe/z_loss", "moe/dropped_fraction"):
    np.testing.assert_allclose(sums_s[key], sums[key], rtol=1e-5, atol=1e-6)
  assert float(sums["moe/dropped_fraction"]) > 0  # capacity 1.0 drops some assignments
  for a, b in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_router_jitter_only_in_training():
  x = jax.random.normal(jax.random.key(11), (2, 16, D))
  plain = MoE(MoEConfig(num_experts=E, experts_per_token=1, dropless=True), d_ff=F)
  jitter = MoE(MoEConfig(num_experts=E, experts_per_token=1, dropless=True, router_jitter=0.5),
               d_ff=F)  # fmt: skip
  params = random_params(plain, x, seed=12)
  run = jax.jit(lambda layer, det: layer.apply({"params": params}, x, deterministic=det,
                                               rngs={"dropout": jax.random.key(0)}),
                static_argnums=(0, 1))  # fmt: skip
  np.testing.assert_array_equal(run(jitter, True), run(plain, True))
  # Jitter scales the router input: gates (softmax probabilities) change in training.
  assert float(jnp.abs(run(jitter, False) - run(plain, False)).max()) > 1e-3
