"""Timing helpers shared by the training-step benchmarks: one optimizer step per call, and variants timed
side by side, interleaved in a shuffled order every round so machine load hits them alike."""
import random, time
import torch
import torch.nn.functional as F

def make_step(model, ids, mask, y, lr):
    opt = torch.optim.AdamW(model.parameters(), lr)
    def step():
        loss = F.cross_entropy(model(ids, mask), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return step

def bench(variants: dict, rounds: int, steps: int, seed: int = 0):
    "Per-round seconds per step of each variant, interleaved in a shuffled order every round."
    rng, times = random.Random(seed), {k: [] for k in variants}
    for f in variants.values():
        for _ in range(2): f()  # warm-up
    for _ in range(rounds):
        order = list(variants); rng.shuffle(order)
        for k in order:
            t = time.perf_counter()
            for _ in range(steps): variants[k]()
            times[k].append((time.perf_counter() - t) / steps)
    return times
