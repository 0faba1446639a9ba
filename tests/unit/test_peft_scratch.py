"""The from-scratch PEFT methods against the `peft` library and against their definitions."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from prefopt.peft_scratch import (
    BottleneckAdapter,
    LoRALinear,
    adapter_parameters,
    adapter_state_dict,
    adapters_disabled,
    inject,
    load_adapter_state_dict,
    merge_all,
    set_adapters_enabled,
    trainable_parameters,
    unmerge_all,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STORIES = DATA / "stories260K"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on 2 shared cores: a second intra-op thread costs far more than it saves (~10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_qwen3() -> nn.Module:
    torch.manual_seed(0)
    cfg = Qwen3Config(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=300,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def stories() -> nn.Module:
    if not STORIES.is_dir():
        pytest.skip(f"real checkpoint not found: {STORIES} (the shared/ data folder beside the repo)")
    return AutoModelForCausalLM.from_pretrained(STORIES).eval()


@pytest.fixture(params=["stories260K", "tiny-qwen3"])
def base_model(request) -> nn.Module:
    if request.param == "tiny-qwen3":
        return tiny_qwen3()
    return copy.deepcopy(request.getfixturevalue("stories"))


def token_batch(model: nn.Module, batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=g)


def randomize(params: list[torch.Tensor], seed: int = 1) -> None:
    """Give zero-initialised adapter tensors non-zero values, so they actually do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen weights, under the names they had before injection (drop the wrapper's 'base_layer.')."""
    adapter = set(adapter_parameters(model))
    return {
        n.replace(".base_layer", ""): p.detach().clone()
        for n, p in model.named_parameters()
        if n not in adapter
    }


# ---------------------------------------------------------------- LoRA


def test_lora_init_is_kaiming_a_and_zero_b():
    layer = LoRALinear(nn.Linear(256, 32), r=8, alpha=16)
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) on fan_in 256 = U(-1/sqrt(256), 1/sqrt(256))
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.95 * bound  # 2048 uniform draws come close to the bound
    assert torch.equal(layer.lora_B, torch.zeros(32, 8))
    assert layer.scaling == 2.0


def test_lora_matches_peft_numerically(base_model):
    """Same A and (random, non-zero) B in both: same logits, to 1e-6, on a real Llama and a tiny Qwen3."""
    ours = inject(copy.deepcopy(base_model), "lora", ALL_LINEAR, r=4, alpha=8)
    theirs = get_peft_model(
        copy.deepcopy(base_model), LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEAR, lora_dropout=0.0)
    )
    assert trainable_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
    g = torch.Generator().manual_seed(1)
    n_layers = 0
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and "default" in module.lora_A:
                mine = ours.get_submodule(name.removeprefix("base_model.model."))
                mine.lora_A.copy_(module.lora_A["default"].weight)
                b = torch.randn(mine.lora_B.shape, generator=g)
                mine.lora_B.copy_(b)
                module.lora_B["default"].weight.copy_(b)
                n_layers += 1
    assert n_layers == len(ALL_LINEAR) * base_model.config.num_hidden_layers
    ids = token_batch(base_model)
    with torch.no_grad():
        ours_logits, peft_logits, base_logits = (
            ours(ids).logits,
            theirs(input_ids=ids).logits,
            base_model(ids).logits,
        )
    torch.testing.assert_close(ours_logits, peft_logits, rtol=0, atol=1e-6)
    assert (ours_logits - base_logits).abs().max() > 1e-2  # B != 0 really changed the model


def test_lora_zero_init_keeps_greedy_output(stories):
    tok = AutoTokenizer.from_pretrained(STORIES)
    enc = tok("Once upon a time", return_tensors="pt")
    greedy = {"max_new_tokens": 20, "do_sample": False}
    base_out = stories.generate(**enc, **greedy)
    assert tok.decode(base_out[0], skip_special_tokens=True).startswith(
        "Once upon a time, there was a little girl named Lily."
    )
    adapted = inject(copy.deepcopy(stories), "lora", ALL_LINEAR, r=8, alpha=16)
    assert torch.equal(adapted.generate(**enc, **greedy), base_out)
    with torch.no_grad():
        assert torch.equal(adapted(enc.input_ids).logits, stories(enc.input_ids).logits)


def test_merge_then_unmerge_restores_base_weights():
    model = inject(tiny_qwen3(), "lora", ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    randomize([p for n, p in adapter_parameters(model).items() if n.endswith("lora_B")])
    before = base_weights(model)
    ids = token_batch(model)
    with torch.no_grad():
        unmerged = model(ids).logits
        merge_all(model)
        merged = model(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    layer = model.model.layers[0].self_attn.q_proj
    expected = before["model.layers.0.self_attn.q_proj.weight"] + layer.lora_B @ layer.lora_A * 2.0
    torch.testing.assert_close(layer.base_layer.weight, expected, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="unmerge"):
        set_adapters_enabled(model, False)
    unmerge_all(model)
    for name, w in base_weights(model).items():
        torch.testing.assert_close(w, before[name], rtol=0, atol=1e-6)


def test_float32_adapters_beside_a_bf16_base():
    lora = LoRALinear(nn.Linear(8, 4).to(torch.bfloat16), r=2).float()
    lora.base_layer.to(torch.bfloat16)
    adapter = BottleneckAdapter(nn.Linear(8, 4).to(torch.bfloat16), dim=4, bottleneck=2).float()
    adapter.base_layer.to(torch.bfloat16)
    randomize([lora.lora_B, adapter.adapter_up.weight])
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    for module in (lora, adapter):
        out = module(x)
        assert out.dtype == torch.bfloat16
        assert (out.float() - module.base_layer(x).float()).abs().max() > 1e-3


def test_deepcopy_gives_an_independent_prefix():
    model = inject(tiny_qwen3(), "prefix", num_virtual_tokens=2)
    twin = copy.deepcopy(model)
    ids = token_batch(model)
    with torch.no_grad():
        twin.prefix_encoder.prefix.add_(1.0)  # the copy's attention layers must read the copy's prefix
        assert not torch.equal(twin(ids).logits, model(ids).logits)
        twin.prefix_encoder.prefix.sub_(1.0)
        torch.testing.assert_close(twin(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method, targets", [("lora", ALL_LINEAR), ("adapter", ["o_proj", "mlp"])])
def test_disabled_adapters_compute_the_base_model(method, targets):
    base = tiny_qwen3()
    model = inject(copy.deepcopy(base), method, targets)
    randomize(list(adapter_parameters(model).values()))
    ids = token_batch(base)
    with torch.no_grad():
        base_logits, on = base(ids).logits, model(ids).logits
        with adapters_disabled(model):
            off = model(ids).logits
        again = model(ids).logits
    assert torch.equal(off, base_logits)
    assert (on - base_logits).abs().max() > 1e-2
    assert torch.equal(again, on)  # the context manager switched them back on


# ---------------------------------------------------------------- bottleneck adapter


def test_adapter_is_identity_at_init_and_counts_match_formula(stories):
    model = inject(copy.deepcopy(stories), "adapter", ["o_proj", "mlp"], bottleneck=8)
    d, b, layers = 64, 8, stories.config.num_hidden_layers
    assert trainable_parameters(model)[0] == 2 * layers * (2 * d * b + b + d)
    assert isinstance(model.model.layers[0].mlp, BottleneckAdapter)
    ids = token_batch(stories)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, stories(ids).logits)


class TupleOut(nn.Module):
    """Returns (output, extra) like an attention block."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x), "weights"


def test_adapter_on_tuple_output_adapts_first_element():
    wrapped = BottleneckAdapter(TupleOut(), dim=4, bottleneck=2)
    randomize([wrapped.adapter_up.weight])
    x = torch.randn(3, 4)
    out, extra = wrapped(x)
    h = wrapped.base_layer.proj(x)
    down, up = wrapped.adapter_down, wrapped.adapter_up
    expected = h + torch.nn.functional.gelu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias
    assert extra == "weights"
    torch.testing.assert_close(out, expected)
    assert (out - h).abs().max() > 1e-4


# ---------------------------------------------------------------- prefix tuning


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_matches_peft_prefix_tuning(projection):
    """Same prefixes in: same logits as peft's PrefixTuning (which shifts real positions by P)."""
    base, n_virtual = tiny_qwen3(), 5
    ours = inject(copy.deepcopy(base), "prefix", num_virtual_tokens=n_virtual, projection=projection)
    theirs = get_peft_model(
        copy.deepcopy(base),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n_virtual, prefix_projection=projection),
    )
    assert trainable_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
    enc, mine = theirs.prompt_encoder["default"], ours.prefix_encoder
    with torch.no_grad():
        if projection:
            mine.prefix_embedding.copy_(enc.embedding.weight)
            mine.prefix_mlp_in.load_state_dict(enc.transform[0].state_dict())
            mine.prefix_mlp_out.load_state_dict(enc.transform[2].state_dict())
        else:
            mine.prefix.copy_(enc.embedding.weight.view(mine.prefix.shape))
    ids = token_batch(base, length=10)
    padded = torch.ones_like(ids)
    padded[0, :3] = 0  # left padding: the mask path, not only transformers' mask-free causal path
    positions = torch.arange(n_virtual, n_virtual + ids.shape[1])[None]
    for mask in (torch.ones_like(ids), padded):
        with torch.no_grad():
            peft_logits = theirs(input_ids=ids, attention_mask=mask).logits
            our_logits = ours(ids, attention_mask=mask, position_ids=positions).logits
        real = mask.bool()
        torch.testing.assert_close(our_logits[real], peft_logits[real], rtol=0, atol=1e-5)


def test_prefix_disabled_is_the_base_model_and_generation_uses_the_cache_correctly():
    base = tiny_qwen3()
    model = inject(copy.deepcopy(base), "prefix", num_virtual_tokens=4)
    ids = token_batch(base, length=10)
    with torch.no_grad():
        base_logits, on = base(ids).logits, model(ids).logits
        with adapters_disabled(model):
            off = model(ids).logits
    assert torch.equal(off, base_logits)
    assert (on - base_logits).abs().max() > 1e-2
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    greedy = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "attention_mask": mask}
    with_cache = model.generate(ids, use_cache=True, **greedy)
    without_cache = model.generate(ids, use_cache=False, **greedy)  # recomputes every prefix from scratch
    assert torch.equal(with_cache, without_cache)


# ---------------------------------------------------------------- training, counting, saving


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize(
    "method, hyper",
    [
        ("lora", {"target_modules": ALL_LINEAR, "r": 4, "alpha": 8}),
        ("adapter", {"target_modules": ["o_proj", "mlp"], "bottleneck": 16}),
        ("prefix", {"num_virtual_tokens": 8}),
        ("prefix", {"num_virtual_tokens": 8, "projection": True, "encoder_hidden_size": 32}),
    ],
)
def test_training_moves_only_the_adapter_and_lowers_the_loss(stories, method, hyper):
    model = inject(copy.deepcopy(stories), method, **hyper)
    frozen = base_weights(model)
    start = {n: p.detach().clone() for n, p in adapter_parameters(model).items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model).values()}
    ids = token_batch(model, batch=4, length=16, seed=3)  # toy task: memorise four fixed sequences
    opt = torch.optim.Adam(trainable, lr=3e-2)
    model.train()
    first = lm_loss(model, ids).item()
    for _ in range(10):
        opt.zero_grad()
        lm_loss(model, ids).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = lm_loss(model, ids).item()
    assert last < 0.75 * first, (first, last)  # ~16 nats for random tokens, ~6-8 after
    for name, w in base_weights(model).items():
        assert torch.equal(w, frozen[name]), name
    for name, p in adapter_parameters(model).items():
        assert not torch.equal(p, start[name]), name


def test_counts_match_formulas_and_methods_stack():
    model = tiny_qwen3()
    total = trainable_parameters(model)[1]
    d, layers, q_dim, kv_dim, mlp = 64, 2, 4 * 16, 2 * 16, 128
    inject(model, "lora", ["q_proj", "k_proj", "v_proj", "o_proj"], r=8)
    lora = layers * 8 * ((d + q_dim) + 2 * (d + kv_dim) + (q_dim + d))
    assert trainable_parameters(model) == (lora, total + lora)
    inject(model, "adapter", ["down_proj"], bottleneck=4)  # adding a method keeps earlier adapters trainable
    adapter = layers * (2 * d * 4 + 4 + d)
    inject(model, "prefix", num_virtual_tokens=3)
    prefix = 3 * layers * 2 * kv_dim
    assert trainable_parameters(model) == (lora + adapter + prefix, total + lora + adapter + prefix)
    assert mlp == model.model.layers[0].mlp.down_proj.base_layer.in_features


def test_adapter_state_dict_round_trip():
    model = inject(tiny_qwen3(), "lora", ["q_proj", "v_proj"], r=2)
    inject(model, "prefix", num_virtual_tokens=2)
    randomize(list(adapter_parameters(model).values()), seed=5)
    saved = adapter_state_dict(model)
    assert len(saved) == 2 * 2 * 2 + 1 and all("lora_" in k or "prefix_encoder" in k for k in saved)
    fresh = inject(tiny_qwen3(), "lora", ["q_proj", "v_proj"], r=2)
    inject(fresh, "prefix", num_virtual_tokens=2)
    ids = token_batch(model)
    with torch.no_grad():
        assert not torch.equal(fresh(ids).logits, model(ids).logits)
        load_adapter_state_dict(fresh, saved)
        assert torch.equal(fresh(ids).logits, model(ids).logits)
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state_dict(fresh, {k: v for k, v in saved.items() if "prefix" not in k})


def test_inject_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown PEFT method"):
        inject(tiny_qwen3(), "ia3", ["q_proj"])
    with pytest.raises(ValueError, match="no module"):
        inject(tiny_qwen3(), "lora", ["query_key_value"])
    with pytest.raises(TypeError, match="nn.Linear"):
        inject(tiny_qwen3(), "lora", ["mlp"])
