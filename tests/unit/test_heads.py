"""Scalar head: last-real-token scores independent of padding side, bias, save/load (full and peft)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModel, GPT2Config, GPT2Model, Qwen3Config, Qwen3ForCausalLM

from prefopt.batching import position_ids
from prefopt.models.heads import ScalarHeadModel, last_real_index

STORIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stories260K"


def _tiny_qwen3(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=64, tie_word_embeddings=True, pad_token_id=0,
    )  # fmt: skip
    return Qwen3ForCausalLM(cfg).eval()


def _stories():
    if not STORIES.exists():
        pytest.skip(f"shared test data not found: {STORIES}")
    return AutoModel.from_pretrained(STORIES).eval()


def _tiny_gpt2() -> GPT2Model:
    """Absolute position embeddings: the trunk where wrong position ids visibly change scores."""
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


def _pad(rows: list[list[int]], side: str, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids, mask = [], []
    for r in rows:
        fill = [pad_id] * (width - len(r))
        ids.append(fill + r if side == "left" else r + fill)
        mask.append([0] * len(fill) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * len(fill))
    return torch.tensor(ids), torch.tensor(mask)


def test_last_real_index_and_positions_hand_worked():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_real_index(mask).tolist() == [2, 4, 4, 4]
    assert position_ids(mask).tolist() == [
        [0, 1, 2, 2, 2],
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 4],
        [0, 0, 0, 0, 0],
    ]
    with pytest.raises(ValueError, match="no real token"):
        last_real_index(torch.tensor([[1, 1], [0, 0]]))


def test_head_init_std_and_zero_bias():
    class Dummy(nn.Module):
        config = SimpleNamespace(hidden_size=20_000)

    torch.manual_seed(0)
    m = ScalarHeadModel(Dummy())
    assert m.head.weight.shape == (1, 20_000)
    assert m.head.weight.std().item() == pytest.approx(1 / math.sqrt(20_001), rel=0.03)
    assert m.head.bias.item() == 0.0 and m.bias.item() == 0.0


def test_causal_lm_is_unwrapped_to_its_trunk_and_values_match_direct_formula():
    lm = _tiny_qwen3()
    m = ScalarHeadModel(lm)
    assert m.trunk is lm.model
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    values = m(ids, mask)
    hidden = lm.model(input_ids=ids).last_hidden_state
    expected = hidden @ m.head.weight[0] + m.head.bias[0]
    assert values.shape == (2, 7)
    torch.testing.assert_close(values, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m.score(ids, mask), expected[:, -1])


@pytest.mark.parametrize(
    "trunk_fn", [lambda: _tiny_qwen3(), _stories, _tiny_gpt2], ids=["tiny-qwen3", "stories260K", "gpt2"]
)
def test_score_identical_for_left_right_and_no_padding(trunk_fn):
    trunk = trunk_fn()
    torch.manual_seed(1)
    m = ScalarHeadModel(trunk)
    vocab = trunk.config.vocab_size
    rows = [torch.randint(3, vocab, (n,)).tolist() for n in (9, 4, 6, 1)]
    alone = torch.cat([m.score(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
    for side in ("left", "right"):
        ids, mask = _pad(rows, side)
        torch.testing.assert_close(m.score(ids, mask), alone, atol=1e-5, rtol=0)
    # Per-token values of the real tokens also agree across paddings.
    (li, lm_), (ri, rm) = _pad(rows, "left"), _pad(rows, "right")
    torch.testing.assert_close(m(li, lm_)[lm_.bool()], m(ri, rm)[rm.bool()], atol=1e-5, rtol=0)


def test_left_padding_without_mask_positions_breaks_absolute_position_trunks():
    """Negative control: default positions (0..T-1) shift a left-padded row; RoPE is relative so it
    would hide this, GPT-2's absolute positions do not."""
    m = ScalarHeadModel(_tiny_gpt2())
    rows = [[5, 6, 7, 8, 9], [10, 11]]
    ids, mask = _pad(rows, "left")
    naive = m.head(m.trunk(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]).squeeze(-1)
    alone = m.score(torch.tensor([rows[1]]), torch.ones(1, 2, dtype=torch.long))
    torch.testing.assert_close(m.score(ids, mask)[1:], alone, atol=1e-5, rtol=0)
    assert (naive[1] - alone[0]).abs() > 1e-3


def test_bias_is_subtracted_from_scores_only():
    m = ScalarHeadModel(_tiny_qwen3())
    ids, mask = _pad([[5, 6, 7], [8, 9]], "right")
    before_scores, before_values = m.score(ids, mask), m(ids, mask)
    m.set_bias(0.75)
    torch.testing.assert_close(m.score(ids, mask), before_scores - 0.75)
    torch.testing.assert_close(m(ids, mask), before_values)


def test_save_load_roundtrip_full_trunk(tmp_path):
    m = ScalarHeadModel(_tiny_qwen3())
    m.set_bias(-0.3)
    ids, mask = _pad([[5, 6, 7, 9], [8, 9]], "left")
    m.save(tmp_path)
    assert (tmp_path / "trunk" / "config.json").is_file()
    loaded = ScalarHeadModel.load(tmp_path).eval()
    assert loaded.bias.item() == pytest.approx(-0.3)
    torch.testing.assert_close(loaded.score(ids, mask), m.score(ids, mask), atol=0, rtol=0)


def test_save_without_trunk_needs_a_trunk_to_load(tmp_path):
    lm = _tiny_qwen3()
    m = ScalarHeadModel(lm)
    m.save(tmp_path, save_trunk=False)
    assert not (tmp_path / "trunk").exists()
    with pytest.raises(FileNotFoundError, match="pass trunk"):
        ScalarHeadModel.load(tmp_path)
    loaded = ScalarHeadModel.load(tmp_path, trunk=lm)
    ids, mask = _pad([[1, 2, 3]], "right")
    torch.testing.assert_close(loaded.score(ids, mask), m.score(ids, mask), atol=0, rtol=0)


def test_save_load_peft_trunk_stores_only_the_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    _tiny_qwen3().save_pretrained(tmp_path / "base")
    trunk = AutoModel.from_pretrained(tmp_path / "base")
    trunk = peft.get_peft_model(
        trunk, peft.LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():  # B is zero-initialised: make the adapter matter so the round trip is tested
        for name, p in trunk.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    m = ScalarHeadModel(trunk).eval()
    m.set_bias(0.2)
    m.save(tmp_path / "rm")
    saved = {p.name for p in (tmp_path / "rm" / "trunk").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    loaded = ScalarHeadModel.load(tmp_path / "rm").eval()
    dropouts = [mod.p for mod in loaded.modules() if isinstance(mod, nn.Dropout)]
    assert dropouts and all(p == 0.0 for p in dropouts)  # lora_dropout=0.1 turned off on load
    ids, mask = _pad([[5, 6, 7, 9], [8, 9]], "left")
    torch.testing.assert_close(loaded.score(ids, mask), m.score(ids, mask), atol=1e-6, rtol=0)
    plain = ScalarHeadModel.load(tmp_path / "rm", trunk=AutoModel.from_pretrained(tmp_path / "base"))
    assert (plain.score(ids, mask) - m.score(ids, mask)).abs().max() > 1e-3  # the adapter did matter
