"""Timing helpers shared by the training-step benchmarks: one optimizer step per call, and variants timed
side by side, interleaved in a shuffled order every round so machine load hits them alike."""
import os, random, time
from pathlib import Path
import torch
import torch.nn.functional as F
from tq_nb.experiments import cpu_name  # re-exported: the benchmarks record the CPU as the results do

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

def parse_args(doc: str, target: float, argv=None):
    "Command-line options shared by the step benchmarks; also sets torch's thread count."
    import argparse
    p = argparse.ArgumentParser(description=doc.split('\n')[0])
    p.add_argument('--rounds', type=int, default=15)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared; 0 = torch default)')
    p.add_argument('--target', type=float, default=target)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    return a

def quick_batch(n_classes: int = 26, seed: int = 0):
    "The `quick` preset's settings and one full-length random batch `(ids, mask, y)` for it."
    from tq_nb.transformer import PRESETS
    cfg = PRESETS['quick']
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, cfg['vocab_size'], (cfg['batch_size'], cfg['max_len']), generator=g)
    return cfg, (ids, torch.ones_like(ids, dtype=torch.bool), torch.randint(0, n_classes, (cfg['batch_size'],), generator=g))

def time_and_report(models: dict, batch, cfg, a, note: str = '') -> dict:
    "Time one training step of each model (the first is the reference), print the table, return median ratios."
    import os, statistics, sys
    variants = {k: make_step(m.train(), *batch, cfg['lr']) for k, m in models.items()}
    load0 = os.getloadavg()[0]
    times = bench(variants, a.rounds, a.steps)
    ids = batch[0]
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"settings: quick model (d_model {cfg['d_model']}, {cfg['n_layers']} layers), batch {ids.shape[0]} x {ids.shape[1]} "
          f"tokens{note}, AdamW, {a.rounds} rounds x {a.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    ref = times[next(iter(times))]
    print(f"{'variant':16s} {'median ms':>10s} {'ratio (median of rounds)':>25s} {'ratio (best times)':>19s}")
    ratios = {}
    for k, ts in times.items():
        ratios[k] = statistics.median(t / f for t, f in zip(ts, ref))
        print(f"{k:16s} {1e3 * statistics.median(ts):10.1f} {ratios[k]:25.3f} {min(ts) / min(ref):19.3f}")
    return ratios

def verdict(label: str, ratio: float, target: float):
    "Print a measured ratio against its target."
    print(f"{label} = {ratio:.3f} (target <= {target}): {'OK' if ratio <= target else 'ABOVE TARGET'}")

def conditions():
    "Load and CPU pressure right now (the CPU may be shared)."
    c = dict(loadavg=os.getloadavg())
    try: c['cpu_pressure'] = Path('/proc/pressure/cpu').read_text().splitlines()[0]
    except OSError: pass
    return c
