"""The floor under PPO's speed on the harness workload: only the passes that exact PPO cannot skip.

    .venv/bin/python bench/ppo_floor.py [--bf16] [--micro-batch 4] [--attn sdpa|eager]

For each of the 8 updates of 16 prompts (the harness's prompts and tokenizer, 48-token responses) it
times, in plain PyTorch on the same model:

* the rollout's 4 no-grad forwards: policy and reference log-probs of the response tokens, the value
  at every response position, the reward at the last token;
* 4 epochs of policy and value forward + backward over the 16 sequences in micro-batches, and one
  AdamW step of each per epoch (1 minibatch, as the harness sets).

Nothing else: no sampling (random response tokens: their values do not change the cost), no PPO
losses beyond a sum, no clipping, no metrics. Rows are sorted by length, so each micro-batch is as
narrow as its longest row (rounded up to 16 under bf16, as prefopt does: see docs/performance.md).
This is what any implementation of four-model PPO with these (eager PyTorch) kernels must spend, so
its `episodes_per_s` bounds every such implementation from above even if its generation were free:
`bench/ab.py` sets it beside TRL's (`--only ppo_floor_bf16 ppo_floor_bf16_eager`). Prints the
harness's RESULT line (`ppo_floor[_bf16][_eager]`).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from types import SimpleNamespace

import harness

RESPONSE = 48


def padded_batches(rows: list[list[int]], micro: int, multiple: int, pad_id: int):
    """Micro-batches of rows sorted by length, right-padded to the longest (rounded up to `multiple`)."""
    import torch

    from prefopt.batching import round_up

    rows = sorted(rows, key=len)
    for i in range(0, len(rows), micro):
        chunk = rows[i : i + micro]
        width = round_up(max(map(len, chunk)), multiple)
        ids = torch.full((len(chunk), width), pad_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        yield ids, mask


def response_logprob_sum(model, ids, mask):
    """Summed log-probs of the last RESPONSE tokens (LM head on those positions only)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=RESPONSE + 1).logits[:, :-1].float()
    targets = ids[:, -RESPONSE:]  # right padding: timing only, so the exact slice does not matter
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None]).sum()


def value_sum(model, head, ids, mask):
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return head(hidden[:, -RESPONSE:]).float().sum()


def update(models, heads, opts, rows, a, pad_id, autocast):
    import torch

    policy, ref, value, reward = models
    batches = list(padded_batches(rows, a.micro_batch, a.multiple, pad_id))
    with torch.no_grad(), autocast():  # the rollout's scoring passes
        for ids, mask in batches:
            response_logprob_sum(policy, ids, mask)
            response_logprob_sum(ref, ids, mask)
            value_sum(value, heads[0], ids, mask)
            value_sum(reward, heads[1], ids, mask)
    for _ in range(a.ppo_epochs):
        for ids, mask in batches:
            with autocast():
                loss = response_logprob_sum(policy, ids, mask) + value_sum(value, heads[0], ids, mask)
            loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, widths rounded up to 16")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention kernels")
    a = ap.parse_args()
    a.multiple = 16 if a.bf16 else 1
    common = harness.peer_common()
    common.quiet()
    t_setup = time.perf_counter()
    import torch

    art = common.workload.ensure_artifacts()
    common.set_seed(42)
    tok = common.load_tokenizer(art)
    models = [common.load_policy(art) for _ in range(4)]
    for m in models:
        m.set_attn_implementation(a.attn)
    heads = [torch.nn.Linear(models[0].config.hidden_size, 1) for _ in range(2)]
    for m in models[2:]:
        m.lm_head = None  # value and reward models are trunks + a scalar head
    opts = [
        torch.optim.AdamW(models[0].parameters(), lr=3e-6),
        torch.optim.AdamW([*models[2].parameters(), *heads[0].parameters()], lr=3e-6),
    ]
    for m in (models[1], models[3], heads[1]):
        m.requires_grad_(False)
    prompts = [tok(p["prompt"])["input_ids"] for p in common.workload.make_prompts(a.episodes)]
    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(0, len(tok), (a.episodes, RESPONSE), generator=gen).tolist()
    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    bf16 = lambda: torch.autocast("cpu", torch.bfloat16)  # noqa: E731
    autocast = bf16 if a.bf16 else contextlib.nullcontext
    setup_s = time.perf_counter() - t_setup

    env = common.env_begin()
    t0, step_ends = time.perf_counter(), []
    for i in range(0, a.episodes, a.batch):
        update(models, heads, opts, seqs[i : i + a.batch], a, tok.pad_token_id, autocast)
        step_ends.append(time.perf_counter())
    wall = step_ends[-1] - t0
    res = dict(
        impl="plain PyTorch: the passes only",
        episodes=a.episodes,
        batch=a.batch,
        micro_batch=a.micro_batch,
        num_ppo_epochs=a.ppo_epochs,
        response_length=RESPONSE,
        bf16=a.bf16,
        wall_s=round(wall, 3),
        episodes_per_s=round(a.episodes / wall, 3),  # the passes only: generation is not timed
        positions=sum(map(len, seqs)),
        attn=a.attn,
    )
    timer = SimpleNamespace(t_begin=t0, step_ends=step_ends)  # what common.finish reads of a timer
    name = "ppo_floor" + ("_bf16" if a.bf16 else "") + ("_eager" if a.attn == "eager" else "")
    keys = ("episodes_per_s", "wall_s")
    common.finish(name, res, timer=timer, setup_s=setup_s, env=env, extra_keys_first=keys)


if __name__ == "__main__":
    main()
