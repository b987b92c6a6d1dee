"""Training speed per method at the study's `base` preset: eager PyTorch against `torch.compile`, side by side.

For each method, one model trains eagerly and a copy trains through `torch.compile` (inductor, on the CPU) on the
same real WordNet batches, one optimizer step at a time (Adam, gradient clipping, as the Learner does), with ONE
PyTorch thread. Rounds alternate the two in a rotating order; each round's time is CPU time of this process
(time.process_time), which is what a single-threaded run's wall time is on a free core, so the ratio holds even
while other work shares the machine. Reported per method: steps/s eager and compiled (median over rounds), the
paired ratio (median and quartiles), the compile time (wall), and whether the compiled step gave the same loss
as the eager one on the first batch (float tolerance: inductor may reorder sums). Also: how long the DataLoader
takes to make a batch, against a step (is loading on the hot path?).

    .venv/bin/python benchmarks/bench_train.py              # writes res/bench/bench_train_cpu.json
    .venv/bin/python benchmarks/bench_train.py --methods fp bin_scaled --rounds 5
"""
from __future__ import annotations
import argparse, copy, datetime, json, os, platform, shlex, statistics, sys, time, traceback, warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from tq_nb.data import atomic_write_bytes
from tq_nb.experiments import apply_method_, calibrate_model_, cpu_name, get_experiment, load_data
from tq_nb.transformer import PRESETS, build_model

ROOT = Path(__file__).resolve().parent.parent
METHODS = ('fp', 'w8', 'w2_twn', 'w8a8', 'w4a4_lsq', 'bin', 'bin_scaled', 'irnet', 'irnet_scaled')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--methods', nargs='+', default=list(METHODS))
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--steps', type=int, default=10, help='optimizer steps per round and variant')
    p.add_argument('--preset', default='base')
    p.add_argument('--out', default=str(ROOT/'res'/'bench'/'bench_train_cpu.json'))
    return p.parse_args(argv)


def make_step(model, lr):
    "One training step as the Learner takes it: forward, cross-entropy, backward, clip to norm 1, Adam."
    opt = torch.optim.Adam(model.parameters(), lr)
    def step(batch):
        x, m, y = batch
        loss = F.cross_entropy(model(x, m), y)
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
        return loss.detach()
    return step


def variant(name, dls, preset):
    model = build_model(preset, n_classes=dls.n_classes, vocab_size=dls.vocab_size, seed=0)
    e = get_experiment(name)
    apply_method_(model, e)
    if e.method == 'fully': calibrate_model_(model, dls)
    return model.train()


def quartiles(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return dict(median=statistics.median(xs), q1=q[0], q3=q[2])


def bench_method(name, dls, batches, a):
    lr = PRESETS[a.preset]['lr']
    eager_m = variant(name, dls, a.preset)
    comp_m = copy.deepcopy(eager_m)
    eager, compiled = make_step(eager_m, lr), make_step(torch.compile(comp_m), lr)
    t0 = time.perf_counter()
    l_comp = compiled(batches[0]).item()                       # compiles forward and backward
    compile_s = time.perf_counter() - t0
    l_eager = eager(batches[0]).item()
    for b in batches[1:3]: eager(b); compiled(b)                  # warm-up (recompiles, if any, happen here)
    times, walls = {'eager': [], 'compiled': []}, {'eager': [], 'compiled': []}
    for r in range(a.rounds):
        for k in (('eager', 'compiled') if r % 2 == 0 else ('compiled', 'eager')):
            f = eager if k == 'eager' else compiled
            t, w = time.process_time(), time.perf_counter()
            for i in range(a.steps): f(batches[(r * a.steps + i) % len(batches)])
            times[k].append((time.process_time() - t) / a.steps); walls[k].append((time.perf_counter() - w) / a.steps)
    ratios = [e / c for e, c in zip(times['eager'], times['compiled'])]
    wall_ratios = [e / c for e, c in zip(walls['eager'], walls['compiled'])]
    return dict(eager_steps_per_s=1 / statistics.median(times['eager']), compiled_steps_per_s=1 / statistics.median(times['compiled']),
                speedup=quartiles(ratios), speedup_wall=quartiles(wall_ratios), compile_seconds=compile_s, first_loss_eager=l_eager, first_loss_compiled=l_comp,
                same_first_loss=abs(l_eager - l_comp) <= 1e-4 * max(1.0, abs(l_eager)),
                graph_breaks=sum(torch._dynamo.utils.counters['graph_break'].values()))


def loader_seconds(dls, n=50):
    "CPU seconds the training DataLoader takes to produce one batch."
    it, t = iter(dls.train), time.process_time()
    for _ in range(n): next(it)
    return (time.process_time() - t) / n


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore', category=UserWarning)
    cmd = shlex.join(['.venv/bin/python', 'benchmarks/bench_train.py', *(argv if argv is not None else sys.argv[1:])])
    print(f'command: {cmd}')
    dls = load_data('wordnet', a.preset)
    batches = [b for _, b in zip(range(a.steps * 2 + 3), dls.train)]
    load0, res = os.getloadavg()[0], {}
    for name in a.methods:
        torch._dynamo.reset(); torch._dynamo.utils.counters.clear()
        try: r = bench_method(name, dls, batches, a)
        except Exception as err:  # a method that does not compile is a result too
            r = dict(error=f'{type(err).__name__}: {str(err).splitlines()[0][:300]}', trace=traceback.format_exc()[-2000:])
        res[name] = r
        if 'error' in r: print(f'{name:14s} does not compile: {r["error"]}', flush=True); continue
        s = r['speedup']
        print(f"{name:14s} eager {r['eager_steps_per_s']:6.1f} steps/s  compiled {r['compiled_steps_per_s']:6.1f} steps/s  "
              f"speed-up {s['median']:.2f}x ({s['q1']:.2f}-{s['q3']:.2f}; wall clock {r['speedup_wall']['median']:.2f}x)  compile {r['compile_seconds']:.0f}s  "
              f"same first loss: {r['same_first_loss']}", flush=True)
    step_s = 1 / res['fp']['eager_steps_per_s'] if 'eager_steps_per_s' in res.get('fp', {}) else None
    load_s = loader_seconds(dls)
    print(f'DataLoader: {1e3 * load_s:.2f} ms CPU per batch' + (f', {100 * load_s / step_s:.1f} % of an eager fp step' if step_s else ''))
    out = dict(command=cmd, preset=a.preset, batch=list(batches[0][0].shape), rounds=a.rounds, steps=a.steps, threads=1,
               timer='time.process_time (CPU seconds of this single-threaded process)', methods=res,
               loader_seconds_per_batch=load_s, load_average=[load0, os.getloadavg()[0]],
               torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
               cpu=cpu_name(),
               finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    atomic_write_bytes(Path(a.out), (json.dumps(out, indent=1) + '\n').encode())
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
