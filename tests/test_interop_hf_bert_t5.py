"""llmrl.interop.hf for BERT and T5 against transformers (reference values come from transformers)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from safetensors.numpy import load_file, save_file

from llmrl.interop import hf
from llmrl.models import Bert, T5, count_params, count_params_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 61


def _bert_config(**kw):
  base = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=24,
    max_position_embeddings=16,
    type_vocab_size=3,
  )
  return transformers.BertConfig(**{**base, **kw})


def _t5_config(**kw):
  base = dict(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4)
  return transformers.T5Config(**{**base, **kw})


BERTS = {
  "pretraining": lambda: transformers.BertForPreTraining(_bert_config()),
  "masked_lm_tanh_gelu": lambda: transformers.BertForMaskedLM(_bert_config(hidden_act="gelu_new")),
  "model": lambda: transformers.BertModel(_bert_config()),
  "model_no_pooler": lambda: transformers.BertModel(_bert_config(), add_pooling_layer=False),
  "classifier": lambda: transformers.BertForSequenceClassification(_bert_config(num_labels=3)),
}
T5S = {
  "v1_0_relu": lambda: _t5_config(feed_forward_proj="relu"),
  # Few buckets and a short max_distance put the logarithmic buckets inside the test length.
  "v1_1_gated_gelu": lambda: _t5_config(
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    num_decoder_layers=3,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
  ),
  "gelu_wide_heads": lambda: _t5_config(feed_forward_proj="gelu", d_kv=6, num_heads=3),
}


def _randomize(model, seed=0):
  """Weights scaled up so logits are O(1); norm scales near 1."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm = "LayerNorm" in name or "layer_norm" in name
      if is_norm and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  return model.eval()


def _batch(length=12, seed=1):
  """Token ids with a full row, a left-padded row and a right-padded row."""
  g = torch.Generator().manual_seed(seed)
  ids = torch.randint(0, VOCAB, (3, length), generator=g)
  mask = torch.tensor([[1] * length, [0] * 3 + [1] * (length - 3), [1] * (length - 4) + [0] * 4])
  return ids, mask


def _j(t):
  return jnp.asarray(t.numpy(), jnp.int32)


def _same_tree_as_init(model, params, init_shapes):
  assert jax.tree.structure(init_shapes) == jax.tree.structure(params)
  jax.tree.map(lambda s, p: np.testing.assert_equal(s.shape, p.shape), init_shapes, params)


@pytest.mark.parametrize("name", BERTS)
def test_bert_matches_transformers(name, tmp_path):
  ref = _randomize(BERTS[name]())
  ref.save_pretrained(tmp_path)
  ids, mask = _batch()
  types = torch.tensor([[0] * 6 + [1] * 6, [0] * 8 + [1] * 4, [0] * 4 + [2] * 8])
  with torch.no_grad():
    out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
  model, params = hf.load(tmp_path)
  assert isinstance(model, Bert)
  args = dict(token_type_ids=_j(types), segment_ids=_j(mask))
  v = {"params": params}
  keep = mask.numpy().astype(bool)
  # Per-example outputs read position 0 ([CLS]); the left-padded row 1 has padding there,
  # whose output is undefined (padding only attends to padding in llmrl), so compare rows 0, 2.
  rows = keep[:, 0]
  hidden = np.asarray(model.apply(v, _j(ids), **args, method=Bert.encode))
  np.testing.assert_allclose(hidden[keep], out.hidden_states[-1].numpy()[keep], atol=1e-4)
  cfg = model.config
  if name == "pretraining":
    mlm, nsp = model.apply(v, _j(ids), **args, method=Bert.pretrain)
    assert np.abs(out.prediction_logits.numpy()[keep]).max() > 0.5
    np.testing.assert_allclose(
      np.asarray(mlm)[keep], out.prediction_logits.numpy()[keep], atol=1e-4
    )
    np.testing.assert_allclose(nsp[rows], out.seq_relationship_logits.numpy()[rows], atol=1e-4)
  if name.startswith("masked_lm"):
    np.testing.assert_allclose(
      np.asarray(model.apply(v, _j(ids), **args))[keep], out.logits.numpy()[keep], atol=1e-4
    )
  if name == "model":
    pooled = model.apply(v, _j(ids), **args, method=Bert.pooled)
    np.testing.assert_allclose(pooled[rows], out.pooler_output.numpy()[rows], atol=1e-4)
  if name == "model_no_pooler":
    assert not cfg.pooler and "pooler" not in params
  if name == "classifier":
    assert cfg.num_labels == 3
    logits = model.apply(v, _j(ids), **args, method=Bert.classify)
    np.testing.assert_allclose(logits[rows], out.logits.numpy()[rows], atol=1e-4)
  init_shapes = nn.unbox(
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  )
  _same_tree_as_init(model, params, init_shapes["params"])
  assert count_params_from_config(cfg)["total"] == count_params(params) == ref.num_parameters()


def _t5_reference(hf_config, tmp_path, seed=0):
  ref = _randomize(transformers.T5ForConditionalGeneration(hf_config), seed)
  ref.save_pretrained(tmp_path)
  return ref


def _t5_inputs():
  ids, mask = _batch(length=14)
  g = torch.Generator().manual_seed(5)
  dec = torch.randint(0, VOCAB, (3, 13), generator=g)
  dec[:, 0] = 0  # decoder start = pad, as T5
  return ids, mask, dec


@pytest.mark.parametrize("name", T5S)
def test_t5_matches_transformers(name, tmp_path):
  ref = _t5_reference(T5S[name](), tmp_path)
  ids, mask, dec = _t5_inputs()
  with torch.no_grad():
    want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
  model, params = hf.load(tmp_path)
  assert isinstance(model, T5)
  cfg = model.config
  assert cfg.logit_scale == (name != "v1_1_gated_gelu")
  got = np.asarray(model.apply({"params": params}, _j(ids), _j(dec), segment_ids=_j(mask)))
  assert got.shape == (3, 13, VOCAB) and np.abs(want).max() > 0.5
  np.testing.assert_allclose(got, want, atol=1e-4)
  init_shapes = nn.unbox(
    jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 2), jnp.int32)
    )
  )
  _same_tree_as_init(model, params, init_shapes["params"])
  assert count_params_from_config(cfg)["total"] == count_params(params) == ref.num_parameters()


def test_t5_untied_lm_head_from_older_files(tmp_path):
  """A v1.1 file written before transformers 5: tie_word_embeddings=false and its own lm_head."""
  ref = _t5_reference(T5S["v1_1_gated_gelu"](), tmp_path)
  cfg_file = tmp_path / "config.json"
  c = json.loads(cfg_file.read_text())
  c["tie_word_embeddings"] = False
  c.pop("scale_decoder_outputs", None)
  cfg_file.write_text(json.dumps(c))
  tensors = load_file(tmp_path / "model.safetensors")
  tensors["lm_head.weight"] = (
    np.random.default_rng(0).normal(0, 0.3, (VOCAB, 16)).astype(np.float32)
  )
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  ref = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  assert ref.lm_head.weight.data_ptr() != ref.shared.weight.data_ptr()
  ids, mask, dec = _t5_inputs()
  with torch.no_grad():
    want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
  model, params = hf.load(tmp_path)
  assert not model.config.tied and not model.config.logit_scale and "lm_head" in params
  got = model.apply({"params": params}, _j(ids), _j(dec), segment_ids=_j(mask))
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_t5_encode_decode_methods(tmp_path):
  ref = _t5_reference(T5S["v1_0_relu"](), tmp_path)
  ids, mask, dec = _t5_inputs()
  with torch.no_grad():
    enc = ref.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  model, params = hf.load(tmp_path)
  v = {"params": params}
  encoded = model.apply(v, _j(ids), segment_ids=_j(mask), method=T5.encode)
  keep = mask.numpy().astype(bool)
  np.testing.assert_allclose(np.asarray(encoded)[keep], enc[keep], atol=1e-4)
  logits = model.apply(v, encoded, _j(dec), encoder_segment_ids=_j(mask), method=T5.decode)
  np.testing.assert_allclose(logits, model.apply(v, _j(ids), _j(dec), segment_ids=_j(mask)))


def test_missing_tensor_names_the_key(tmp_path):
  _t5_reference(T5S["v1_0_relu"](), tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  del tensors["decoder.block.1.layer.1.EncDecAttention.k.weight"]
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(
    ValueError, match=r"missing tensors.*decoder\.block\.1\.layer\.1\.EncDecAttention\.k\.weight"
  ):
    hf.load(tmp_path)


def test_bert_missing_head_names_the_key(tmp_path):
  _randomize(BERTS["pretraining"]()).save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  del tensors["cls.seq_relationship.weight"]
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(
    ValueError, match=r"missing tensors for BertForPreTraining.*cls\.seq_relationship\.weight"
  ):
    hf.load(tmp_path)


@pytest.mark.parametrize(
  "config, msg",
  [
    (
      dict(model_type="bert", architectures=["BertForQuestionAnswering"]),
      "BertForQuestionAnswering is not supported",
    ),
    (
      dict(
        _t5_config(feed_forward_proj="gated-relu").to_dict(),
        architectures=["T5ForConditionalGeneration"],
      ),
      "feed_forward_proj='gated-relu' is not supported",
    ),
    (
      dict(_t5_config().to_dict(), architectures=["T5EncoderModel"]),
      "T5EncoderModel is not supported",
    ),
  ],
)
def test_unsupported_architectures(tmp_path, config, msg):
  (tmp_path / "config.json").write_text(json.dumps(config))
  save_file({"x": np.zeros(1, np.float32)}, tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match=msg) as e:
    hf.load(tmp_path)
  assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("kind, name", [("bert", "pretraining"), ("t5", "v1_1_gated_gelu")])
def test_save_round_trip_through_transformers(kind, name, tmp_path):
  if kind == "bert":
    ref = _randomize(BERTS[name]())
    ref.save_pretrained(tmp_path / "in")
  else:
    ref = _t5_reference(T5S[name](), tmp_path / "in")
  model, params = hf.load(tmp_path / "in")
  hf.save(model, params, tmp_path / "out")
  again = getattr(transformers, type(ref).__name__).from_pretrained(tmp_path / "out").eval()
  for (k, a), (k2, b) in zip(ref.state_dict().items(), again.state_dict().items()):
    assert k == k2
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
  if kind == "t5":
    assert again.config.scale_decoder_outputs == ref.config.scale_decoder_outputs
  _, params2 = hf.load(tmp_path / "out")
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_save_rejects_configs_without_transformers_class(tmp_path):
  from llmrl.models import BertConfig, T5Config

  for cfg, msg in (
    (T5Config(vocab_size=VOCAB, tie_embeddings=False, scale_logits=True), "untied lm_head"),
    (BertConfig(vocab_size=VOCAB, nsp_head=False), "no transformers BERT class"),
  ):
    model = T5(cfg) if isinstance(cfg, T5Config) else Bert(cfg)
    with pytest.raises(ValueError, match=f"cannot be written.*{msg}"):
      hf.save(model, {}, tmp_path)


def test_convert_cli_round_trip(tmp_path):
  from llmrl.interop import convert

  ref = _t5_reference(T5S["v1_1_gated_gelu"](), tmp_path / "hf")
  out = tmp_path / "llmrl"
  args = [f"--hf_path={tmp_path / 'hf'}", f"--out={out}"]
  assert convert.main(args) == 0  # what `python -m llmrl.interop.convert` runs
  meta = json.loads((out / "config.json").read_text())
  assert meta["family"] == "t5" and meta["config"]["num_decoder_layers"] == 3
  model, params = convert.load(out)
  assert isinstance(model, T5) and model.config == hf.load(tmp_path / "hf")[0].config
  ids, mask, dec = _t5_inputs()
  with torch.no_grad():
    want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
  got = model.apply({"params": params}, _j(ids), _j(dec), segment_ids=_j(mask))
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert convert.main(args) == 2  # a second conversion into the same folder is refused
  assert convert.main([f"--hf_path={tmp_path / 'nothing'}", f"--out={tmp_path / 'x'}"]) == 2


@pytest.mark.parametrize(
  "bidirectional, buckets, distance", [(True, 32, 128), (False, 32, 128), (True, 8, 12)]
)
def test_relative_position_buckets_match_transformers(bidirectional, buckets, distance):
  from transformers.models.t5.modeling_t5 import T5Attention

  from llmrl.models.layers import relative_position_bucket

  rel = np.arange(-5000, 5001)
  want = T5Attention._relative_position_bucket(
    torch.tensor(rel), bidirectional=bidirectional, num_buckets=buckets, max_distance=distance
  ).numpy()
  got = jax.jit(relative_position_bucket, static_argnums=(1, 2, 3))(
    rel, bidirectional, buckets, distance
  )
  np.testing.assert_array_equal(got, want)
