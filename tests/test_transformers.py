"""Hugging Face transformers backend: tiny models built from configs (no downloads); logits,
generated tokens and gradients match transformers' own sdpa implementation."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")  # in requirements-dev.txt: runs in CI

import flashattn_lite.integrations.transformers as fal_hf  # noqa: E402

from conftest import max_err  # noqa: E402

NAME = fal_hf.register()


def _llama(**kw):
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **kw,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def _bert():
    cfg = transformers.BertConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg)


def _batch(b=3, s=19, left=True):
    ids = torch.randint(1, 97, (b, s))
    am = torch.ones(b, s, dtype=torch.long)
    pads = [0, 5, 11][:b]
    for i, n in enumerate(pads):
        if n:
            if left:
                am[i, :n] = 0
            else:
                am[i, -n:] = 0
    return ids, am


def _run(model, impl, fn):
    model.set_attn_implementation(impl)
    return fn(model)


def test_register_name_rules():
    assert NAME == "fal_lite" and "flash" not in NAME
    with pytest.raises(ValueError, match="Hub kernels"):
        fal_hf.register("my_flash_backend")


@pytest.mark.parametrize("left", [True, False])
def test_llama_logits_and_grads_match_sdpa(left):
    model = _llama()
    ids, am = _batch(left=left)
    keep = am.bool()

    def fwd_bwd(m):
        m.train()  # dropout is 0 in the config: deterministic
        m.zero_grad()
        out = m(ids, attention_mask=am, labels=ids.masked_fill(~keep, -100))
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    la, ga = _run(model, "sdpa", fwd_bwd)
    lb, gb = _run(model, NAME, fwd_bwd)
    assert max_err(la[keep], lb[keep]) < 1e-4
    assert ga.keys() == gb.keys()
    for n in ga:
        assert max_err(ga[n], gb[n]) < 1e-4, n


@pytest.mark.slow
def test_llama_generate_matches_sdpa_with_kv_cache_and_padding():
    model = _llama().eval()
    ids, am = _batch(s=11, left=True)

    def gen(m):
        return m.generate(ids, attention_mask=am, max_new_tokens=8, do_sample=False)

    assert torch.equal(_run(model, "sdpa", gen), _run(model, NAME, gen))


def test_llama_sliding_window_and_bf16():
    model = _llama().to(torch.bfloat16).eval()
    ids, _ = _batch(b=2, s=40)

    def logits(m):
        return m(ids).logits.float()

    a, b = _run(model, "sdpa", logits), _run(model, NAME, logits)
    assert max_err(a, b) < 0.1  # bf16 logits: rounding of two different kernels
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.95


def test_bert_encoder_padding():
    model = _bert()
    ids, am = _batch(s=23, left=False)
    keep = am.bool()

    def fwd_bwd(m):
        m.train()
        m.zero_grad()
        h = m(ids, attention_mask=am).last_hidden_state
        (h[keep] ** 2).mean().backward()
        return h.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    ha, ga = _run(model, "sdpa", fwd_bwd)
    hb, gb = _run(model, NAME, fwd_bwd)
    assert max_err(ha[keep], hb[keep]) < 1e-4
    for n in ga:
        assert max_err(ga[n], gb[n]) < 1e-4, n


def test_from_pretrained_with_attn_implementation(tmp_path):
    model = _llama().eval()
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=NAME).eval()
    assert loaded.config._attn_implementation == NAME
    ids, am = _batch()
    model.set_attn_implementation("sdpa")
    assert (
        max_err(model(ids, attention_mask=am).logits[am.bool()], loaded(ids, attention_mask=am).logits[am.bool()])
        < 1e-4
    )
