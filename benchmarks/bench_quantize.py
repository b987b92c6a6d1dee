"""Cost of weight-only fake quantization in training: one AdamW step (forward, backward, update) of the `quick`
model with every Linear quantized (tq_nb.quantize.quantize_) against the same step in full precision.
Target (issue 3): at most 1.15x.

The variants run side by side in one process, interleaved in a shuffled order in every round, so machine
load hits them alike; we report the median over rounds of each round's time ratio, and the ratio of the
best times. Usage: python benchmarks/bench_quantize.py [--rounds 15] [--steps 5] [--threads N]
"""
import argparse, copy, statistics, sys
import torch
from common import bench, make_step
from tq_nb.transformer import build_model, PRESETS
from tq_nb.quantize import quantize_

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=15)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared; 0 = torch default)')
    p.add_argument('--target', type=float, default=1.15)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    cfg = PRESETS['quick']
    b, L = cfg['batch_size'], cfg['max_len']
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, cfg['vocab_size'], (b, L), generator=g)
    mask = torch.ones(b, L, dtype=torch.bool)
    y = torch.randint(0, 26, (b,), generator=g)
    base = build_model('quick', n_classes=26, seed=0)
    models = {'fp32': base}
    for name, kw in {'w8 per-tensor': {}, 'w8 per-channel': dict(per_channel=True),
                     'w4 stochastic': dict(bits=4, rounding='stochastic')}.items():
        models[name] = copy.deepcopy(base); quantize_(models[name], **kw)
    variants = {k: make_step(m.train(), ids, mask, y, cfg['lr']) for k, m in models.items()}
    times = bench(variants, a.rounds, a.steps)
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"settings: quick model (d_model {cfg['d_model']}, {cfg['n_layers']} layers), batch {b} x {L} tokens, "
          f"AdamW, {a.rounds} rounds x {a.steps} steps, torch {torch.__version__}, {torch.get_num_threads()} threads")
    fp = times['fp32']
    print(f"{'variant':16s} {'median ms':>10s} {'ratio (median of rounds)':>25s} {'ratio (best times)':>19s}")
    ratios = {}
    for k, ts in times.items():
        ratios[k] = statistics.median(t / f for t, f in zip(ts, fp))
        print(f"{k:16s} {1e3 * statistics.median(ts):10.1f} {ratios[k]:25.3f} {min(ts) / min(fp):19.3f}")
    r = ratios['w8 per-tensor']
    print(f"weight-only fake-quant step / fp32 step = {r:.3f} (target <= {a.target}): {'OK' if r <= a.target else 'ABOVE TARGET'}")
    return r

if __name__ == '__main__': main()
