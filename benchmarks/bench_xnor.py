"""The 1-bit XNOR-popcount product (tq_nb.xnor) against the int8 product (`torch._int_mm`, via tq_nb.deploy.int_mm) and
fp32 matmul, at the paper's layer shapes and at batch 1 x 64 tokens, with 1 and 2 threads, paired round by round.

Every variant runs once per round, in a rotating order, for `--repeats` rounds after a warm-up; we report the median
per variant and the ratios paired round by round (median and quartiles), which a burst of load on the shared CPU
disturbs less than a ratio of medians. Shapes are M x K x N: M tokens, K inputs, N outputs. The XNOR kernel gets its
inputs already packed and its weight transposed once (as XnorLinear keeps it); `int_mm` gets int8 values in -1..1.
Also times whole layers (binarize and pack the input, multiply, scale and add the bias): XnorLinear against
IntLinear, built from the same BinaryLinear; and, where convert_ offers binary='xnor', the W1A1 paper-size encoder
end to end on the int8 path and on the XNOR path, with the bytes of its fp32, int8-path and XNOR-path checkpoints.

    .venv/bin/python benchmarks/bench_xnor.py            # writes res/deploy/bench_xnor_cpu.json
"""
from __future__ import annotations
import argparse, copy, datetime, inspect, json, os, shlex, statistics, sys, time, warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save

from tq_nb.data import atomic_write_bytes

from common import conditions, cpu_name
from tq_nb.binarize import BinaryLinear, binarize_
from tq_nb.deploy import IntLinear, convert_, int_mm, save_int
from tq_nb.transformer import build_model
from tq_nb.xnor import LANES, XnorLinear, pack_rows, transpose_words, xnor_mm

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(2048, 512, 512), (2048, 1024, 512), (2048, 512, 1024), (64, 512, 512)]
TARGETS = {(2048, 512, 512): 4.0, (2048, 512, 1024): 4.0}     # the bar: >= 4x torch._int_mm, one thread


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', default='1,2', help='comma-separated thread counts (torch and numba alike)')
    p.add_argument('--repeats', type=int, default=40, help='timed rounds (each runs every variant once)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--no-model', action='store_true', help='skip the end-to-end encoder comparison')
    p.add_argument('--out', default=None, help='result JSON (default res/deploy/bench_xnor_cpu.json)')
    return p.parse_args(argv)


def cpu_info():
    "CPU name, its clock now (MHz, as /proc/cpuinfo reports it) and whether it has AVX-512 VPOPCNTDQ."
    try: text = Path('/proc/cpuinfo').read_text()
    except OSError: return dict(name=cpu_name(), mhz=None, avx512_vpopcntdq=None)
    mhz = next((l.split(':', 1)[1].strip() for l in text.splitlines() if l.startswith('cpu MHz')), None)
    return dict(name=cpu_name(), mhz=float(mhz) if mhz else None, avx512_vpopcntdq='avx512_vpopcntdq' in text)


def paired_rounds(fns: dict, repeats: int, warmup: int) -> dict:
    "Seconds per call of each of `fns`, every variant once per round in a rotating order."
    names, times = list(fns), {k: [] for k in fns}
    for f in fns.values():
        for _ in range(warmup): f()
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter(); fns[k](); times[k].append(time.perf_counter() - t)
    return times


def paired(times, num, den):
    "Median and quartiles of `num / den` per round, and in how many rounds `den` was the faster."
    r = sorted(a / b for a, b in zip(times[num], times[den]))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return dict(median=q[1], q1=q[0], q3=q[2], faster_rounds=sum(x > 1 for x in r), rounds=len(r))


def products(args, threads_list, g):
    rows = []
    for M, K, N in SHAPES:
        x = torch.randint(0, 2, (M, K), generator=g, dtype=torch.int8) * 2 - 1
        w = torch.randint(0, 2, (N, K), generator=g, dtype=torch.int8) * 2 - 1
        a, b = pack_rows(x)[0].numpy(), pack_rows(w)[0].numpy()
        bt, w8t, xf, wft = transpose_words(b), w.t(), x.float(), w.float().t()
        exact = bool(np.array_equal(xnor_mm(a, b, K, bt=bt), int_mm(x, w8t).numpy()))
        if not exact: sys.exit(f'{M}x{K}x{N}: the XNOR kernel differs from the int8 product')
        for threads in threads_list:
            torch.set_num_threads(threads)
            fns = {'xnor': lambda: xnor_mm(a, b, K, threads=threads, bt=bt), 'int8': lambda: int_mm(x, w8t), 'fp32': lambda: xf @ wft}
            t = paired_rounds(fns, args.repeats, args.warmup)
            rows.append(dict(shape=f'{M}x{K}x{N}', M=M, K=K, N=N, threads=threads, exact=exact,
                             median_ms={k: statistics.median(v) * 1e3 for k, v in t.items()},
                             paired={'int8 / xnor': paired(t, 'int8', 'xnor'), 'fp32 / xnor': paired(t, 'fp32', 'xnor')}))
    return rows


def layers(args, threads_list, g):
    out = {}
    for (M, K, N), post_relu in [((2048, 512, 512), False), ((2048, 1024, 512), True), ((64, 512, 512), False)]:
        torch.manual_seed(0)
        m = BinaryLinear(K, N, method='scaled', binarize_act=True, post_relu=post_relu).eval()
        il, xl = IntLinear.from_qweight(m.qweight(), m.bias, 'step' if post_relu else 'sign'), XnorLinear.from_binary_linear(m)
        x = torch.randn(M, K, generator=g)
        with torch.inference_mode():
            if not torch.equal(il(x), xl(x)): sys.exit(f'{M}x{K}x{N}: XnorLinear and IntLinear differ')
            for threads in threads_list:
                torch.set_num_threads(threads)
                t = paired_rounds({'XnorLinear': lambda: xl(x), 'IntLinear': lambda: il(x)}, args.repeats, args.warmup)
                out[f"{M}x{K}x{N} {'{0,1}' if post_relu else '±1'} inputs, {threads} thread(s)"] = dict(
                    median_ms={k: statistics.median(v) * 1e3 for k, v in t.items()}, paired=paired(t, 'IntLinear', 'XnorLinear'))
    return out


def encoder(args, threads_list, g):
    "The W1A1 paper-size encoder (all Linears but the last binarized, inputs too) on the int8 and the XNOR path."
    if 'binary' not in inspect.signature(convert_).parameters: return None
    fake = build_model('paper', n_classes=4, vocab_size=30522, seed=0).eval()
    binarize_(fake, 'all|~cls.final', method='scaled', binarize_act=True)
    variants = {'int8 path': convert_(copy.deepcopy(fake), binary='int8'), 'xnor path': convert_(copy.deepcopy(fake), binary='xnor')}
    ids = torch.randint(5, 30522, (32, 64), generator=g)
    mask = torch.ones(32, 64, dtype=torch.bool)
    out = {}
    with torch.inference_mode():
        ys = {k: m(ids, mask) for k, m in variants.items()}
        same = bool(torch.equal(ys['int8 path'], ys['xnor path']))
        for threads in threads_list:
            torch.set_num_threads(threads)
            t = paired_rounds({k: (lambda m=m: m(ids, mask)) for k, m in variants.items()}, max(args.repeats // 2, 5), args.warmup)
            out[f'{threads} thread(s)'] = dict(median_ms={k: statistics.median(v) * 1e3 for k, v in t.items()},
                                               paired=paired(t, 'int8 path', 'xnor path'))
    sizes = {'fp32': len(st_save({k: v.contiguous() for k, v in build_model('paper', n_classes=4, vocab_size=30522, seed=0).state_dict().items()}))}
    tmp = ROOT/'res'/'deploy'/'.size_probe_xnor.safetensors'
    for k, m in variants.items():
        save_int(m, tmp); sizes[k] = tmp.stat().st_size
    tmp.unlink()
    return dict(model="build_model('paper', n_classes=4, vocab_size=30522); binarize_(m, 'all|~cls.final', method='scaled', "
                      "binarize_act=True)", batch='32 x 64 tokens', same_logits=same, timings=out, checkpoint_bytes=sizes)


def main(argv=None):
    args = parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(',')]
    warnings.filterwarnings('ignore', message='.*deprecated.*')
    before, cpu = conditions(), cpu_info()
    g = torch.Generator().manual_seed(0)
    rows = products(args, threads_list, g)
    layer = layers(args, threads_list, g)
    model = None if args.no_model else encoder(args, threads_list, g)
    after = conditions()

    one = next(r for r in rows if r['shape'] == '2048x512x512' and r['threads'] == 1)
    M, K, N = one['M'], one['K'], one['N']
    word_products = M * N * (-(-K // 64))
    ns = one['median_ms']['xnor'] * 1e6
    vector_ops = word_products / LANES * 3          # XOR, popcount and add on LANES words at a time
    profile = dict(shape=one['shape'], word_products=word_products, xnor_ms=one['median_ms']['xnor'], words_per_ns=word_products / ns,
                   vector_ops_per_word=3 / LANES, vector_ops_per_ns=vector_ops / ns,
                   vector_ops_per_cycle=vector_ops / ns / (cpu['mhz'] / 1e3) if cpu['mhz'] else None, cpu_mhz=cpu['mhz'])
    targets = {f'int8 / xnor >= {v}x at {M_}x{K_}x{N_}, 1 thread': dict(
                   ratio=(r := next(r for r in rows if (r['M'], r['K'], r['N'], r['threads']) == (M_, K_, N_, 1)))['paired']['int8 / xnor']['median'],
                   met=r['paired']['int8 / xnor']['median'] >= v) for (M_, K_, N_), v in TARGETS.items()}
    if model:
        r = model['timings']['1 thread(s)']['paired']['median']
        targets['encoder int8 path / xnor path >= 2x, 1 thread'] = dict(ratio=r, met=r >= 2)
    exe = Path(sys.executable)
    result = dict(
        command=' '.join([shlex.quote(exe.relative_to(ROOT).as_posix() if exe.is_relative_to(ROOT) else str(exe)), 'benchmarks/bench_xnor.py']
                         + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]),
        date=datetime.datetime.now().isoformat(timespec='seconds'),
        note='the CPU was shared with other jobs during the run (see conditions); ratios are paired round by round',
        settings=dict(vars(args), torch=torch.__version__, numba=__import__('numba').__version__, device=cpu['name'],
                      avx512_vpopcntdq=cpu['avx512_vpopcntdq'], cpu_count=os.cpu_count()),
        conditions=dict(before=before, after=after), products=rows, layer=layer, encoder=model, profile=profile, targets=targets)
    out = Path(args.out) if args.out else ROOT/'res'/'deploy'/'bench_xnor_cpu.json'
    atomic_write_bytes(out, json.dumps(result, indent=1).encode())

    print(f"# {result['command']}\n# {cpu['name']}, torch {torch.__version__}, {args.repeats} interleaved rounds; "
          f"{result['note']}; load before {before['loadavg']}, after {after['loadavg']}")
    print(f"{'shape MxKxN':<16}{'thr':>4}{'xnor ms':>9}{'int8 ms':>9}{'fp32 ms':>9}   int8/xnor (q1-q3)   fp32/xnor (q1-q3)")
    for r in rows:
        m, p = r['median_ms'], r['paired']
        print(f"{r['shape']:<16}{r['threads']:>4}{m['xnor']:>9.3f}{m['int8']:>9.3f}{m['fp32']:>9.3f}   "
              + '   '.join(f"{p[k]['median']:5.2f}x ({p[k]['q1']:.2f}-{p[k]['q3']:.2f})" for k in ('int8 / xnor', 'fp32 / xnor')))
    for k, v in layer.items():
        print(f"layer {k}: " + ', '.join(f'{n} {t:.3f} ms' for n, t in v['median_ms'].items())
              + f"; IntLinear / XnorLinear {v['paired']['median']:.2f}x ({v['paired']['q1']:.2f}-{v['paired']['q3']:.2f})")
    if model:
        for k, v in model['timings'].items():
            print(f"W1A1 paper encoder, {k}: " + ', '.join(f'{n} {t:.1f} ms' for n, t in v['median_ms'].items())
                  + f"; int8 / xnor {v['paired']['median']:.2f}x ({v['paired']['q1']:.2f}-{v['paired']['q3']:.2f}); same logits: {model['same_logits']}")
        print('W1A1 paper encoder checkpoint MB: ' + ', '.join(f'{k} {v / 1e6:.2f}' for k, v in model['checkpoint_bytes'].items()))
    print(f"profile {profile['shape']}, 1 thread: {profile['words_per_ns']:.1f} word products per ns, "
          f"{profile['vector_ops_per_ns']:.2f} vector ops per ns" + (f" = {profile['vector_ops_per_cycle']:.2f} per cycle at "
                                                                      f"{cpu['mhz']:.0f} MHz" if cpu['mhz'] else ''))
    for k, v in targets.items(): print(f"target {k}: {'met' if v['met'] else 'NOT met'} ({v['ratio']:.2f}x)")
    print(f'wrote {out}')
    return result


if __name__ == '__main__': main()
