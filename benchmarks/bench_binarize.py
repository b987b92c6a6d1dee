"""Cost of binarization in training: one AdamW step (forward, backward, update) of the `quick` model with all but
the final layer binarized (tq_nb.binarize.binarize_, pattern ALL), basic and IR-Net, against the same step in
full precision. Target (issue 5): at most 1.3x for basic and IR-Net (the original measured 1.75x and 2.5x).
Scaled sign and 1-bit activations (W1A1) are timed too, for information.

The variants run side by side in one process, interleaved in a shuffled order in every round, so machine
load hits them alike; we report the median over rounds of each round's time ratio, and the ratio of the
best times. Usage: python benchmarks/bench_binarize.py [--rounds 15] [--steps 5] [--threads N]
"""
import argparse, copy, os, statistics, sys
import torch
from common import bench, make_step
from tq_nb.transformer import build_model, PRESETS
from tq_nb.binarize import binarize_, set_ir_net_epoch_

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=15)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared; 0 = torch default)')
    p.add_argument('--target', type=float, default=1.3)
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
    for name, method, act in (('basic', 'basic', False), ('irnet', 'irnet', False), ('scaled', 'scaled', False),
                              ('basic W1A1', 'basic', True), ('irnet W1A1', 'irnet', True)):
        models[name] = copy.deepcopy(base); binarize_(models[name], 'ALL', method, binarize_act=act)
        set_ir_net_epoch_(models[name], 3, 6)  # mid-schedule t, k (the cost does not depend on them)
    variants = {k: make_step(m.train(), ids, mask, y, cfg['lr']) for k, m in models.items()}
    load0 = os.getloadavg()[0]
    times = bench(variants, a.rounds, a.steps)
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"settings: quick model (d_model {cfg['d_model']}, {cfg['n_layers']} layers), batch {b} x {L} tokens, pattern ALL "
          f"(13 of 14 Linears binarized), AdamW, {a.rounds} rounds x {a.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    fp = times['fp32']
    print(f"{'variant':12s} {'median ms':>10s} {'ratio (median of rounds)':>25s} {'ratio (best times)':>19s}")
    ratios = {}
    for k, ts in times.items():
        ratios[k] = statistics.median(t / f for t, f in zip(ts, fp))
        print(f"{k:12s} {1e3 * statistics.median(ts):10.1f} {ratios[k]:25.3f} {min(ts) / min(fp):19.3f}")
    for k in ('basic', 'irnet'):
        print(f"{k} binarized step / fp32 step = {ratios[k]:.3f} (target <= {a.target}): {'OK' if ratios[k] <= a.target else 'ABOVE TARGET'}")
    return ratios

if __name__ == '__main__': main()
