"""How long training takes at a preset, per method, and what that means for an epoch and for a suite.

Measures CPU seconds (time.process_time) per training step and per evaluated batch with ONE PyTorch thread, for
the full-precision model and each kind of quantized model, interleaved and repeated (the minimum over rounds is
kept). CPU time of a single-threaded process is what its wall time would be on a free core, so the numbers hold
even while other work shares the machine. Then it estimates an epoch (train + valid + test) and a whole suite.
Also times two threads against one (wall clock, side by side) to show what a second core buys.

Usage: .venv/bin/python benchmarks/bench_learner.py [--preset quick] [--dataset wordnet] [--steps 30] [--rounds 3]
       [--suite main]
"""
import argparse, time
from dataclasses import replace

import torch
import torch.nn.functional as F

from tq_nb.experiments import build_variant, get_experiment, get_suite, load_data, run_tag, suite_experiments
from tq_nb.transformer import PRESETS

p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
p.add_argument('--preset', default='quick'); p.add_argument('--dataset', default='wordnet')
p.add_argument('--steps', type=int, default=30); p.add_argument('--rounds', type=int, default=3)
p.add_argument('--suite', default='main')
a = p.parse_args()
print(f'command: .venv/bin/python benchmarks/bench_learner.py --preset {a.preset} --dataset {a.dataset} '
      f'--steps {a.steps} --rounds {a.rounds} --suite {a.suite}')

dls = load_data(a.dataset, a.preset)
batches = [b for _, b in zip(range(a.steps), dls.train)]
evals = [b for _, b in zip(range(a.steps), dls.valid)]
kinds = {'fp': 'fp', 'quantize': 'w8', 'fully': 'w8a8', 'fully+lsq': 'w8a8_lsq', 'binarize': 'bin', 'irnet': 'irnet'}
models = {}
for k, name in kinds.items():
    m = build_variant(replace(get_experiment(name), dataset=a.dataset), dls, a.preset, seed=0)
    models[k] = (m, torch.optim.Adam(m.parameters(), PRESETS[a.preset]['lr']))


def train_steps(m, opt):
    m.train(); t = time.process_time()
    for *xs, y in batches:
        loss = F.cross_entropy(m(*xs), y); opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    return (time.process_time() - t) / len(batches)


@torch.no_grad()
def eval_steps(m):
    m.eval(); t = time.process_time()
    for *xs, y in evals: m(*xs)
    return (time.process_time() - t) / len(evals)


torch.set_num_threads(1)
step = {k: [] for k in kinds}; ev = {k: [] for k in kinds}
for r in range(a.rounds):
    for k, (m, opt) in models.items():
        step[k].append(train_steps(m, opt)); ev[k].append(eval_steps(m))
step = {k: min(v) for k, v in step.items()}; ev = {k: min(v) for k, v in ev.items()}
n_tr, n_ev = len(dls.train), len(dls.valid) + len(dls.test)
epoch = {k: step[k] * n_tr + ev[k] * n_ev for k in kinds}
print(f'\n{a.dataset}, preset {a.preset}: {n_tr} training batches and {n_ev} evaluation batches per epoch; 1 thread, CPU time')
print(f'{"method":10s} {"ms/train step":>14s} {"ms/eval batch":>14s} {"epoch (s)":>10s} {"vs fp":>6s}')
for k in kinds:
    print(f'{k:10s} {1e3*step[k]:14.1f} {1e3*ev[k]:14.1f} {epoch[k]:10.0f} {epoch[k]/epoch["fp"]:6.2f}')

# two threads vs one, wall clock, interleaved (noisy while the machine is shared)
m, opt = models['fp']
wall = {1: [], 2: []}
for r in range(a.rounds):
    for th in (1, 2):
        torch.set_num_threads(th); t = time.time(); train_steps(m, opt); wall[th].append(time.time() - t)
print(f'\nfp training steps, wall clock: 2 threads / 1 thread = {min(wall[2]) / min(wall[1]):.2f} '
      f'(best of {a.rounds} rounds of {a.steps} steps)')

# the suite at its budget
s = get_suite(a.suite)
epochs = s.epochs or PRESETS[a.preset]['epochs']
frac = 1.0 if s.train_limit is None else min(1.0, s.train_limit / len(dls.train.dataset))
kind_of = lambda e: {'fp': 'fp', 'quantize': 'quantize', 'binarize': 'irnet' if e.binarizer == 'irnet' else 'binarize',
                     'fully': 'fully+lsq' if e.lsq else 'fully'}[e.method]
total = sum(epochs * (step[kind_of(e)] * n_tr * frac + ev[kind_of(e)] * n_ev) for e in suite_experiments(s))
print(f'\nsuite {s.name} ({len(s.experiments)} runs, {epochs} epochs, budget tag {run_tag(a.preset, s.epochs, s.train_limit)}): '
      f'about {total/60:.0f} min of one free core for one seed (data loading and checkpoints not counted)')
