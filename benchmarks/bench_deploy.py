"""Latency and throughput of the `paper`-size encoder: fp32, tq_nb's integer path (tq_nb.deploy), and PyTorch's
dynamic int8 quantization (`torch.ao.quantization.quantize_dynamic`), measured side by side in one run.

Every variant runs once per round, in a rotating order, for `--repeats` rounds after a warm-up; we report the
median (and the minimum) per variant, the ratios of medians, and the ratios paired round by round (median,
quartiles, and in how many rounds ours was the faster), which a burst of load during the run disturbs less.
The CPU may be shared, so the thread count is fixed and the conditions (load, CPU pressure) are recorded
before and after. Also records single-layer timings (the bare int8 product, our compiled layer, PyTorch's
dynamic layer), the size of the fp32 and of the low-bit checkpoints, and how closely each int8 variant
follows fp32 and the fake-quantized model.

    .venv/bin/python benchmarks/bench_deploy.py                   # CPU, 1 thread, writes res/deploy/bench_cpu.json
    .venv/bin/python benchmarks/bench_deploy.py --device cuda     # the same on a GPU (no PyTorch dynamic int8 there)
"""
from __future__ import annotations
import argparse, copy, datetime, json, os, platform, shlex, statistics, sys, time, warnings
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import save as st_save

from tq_nb.data import atomic_write_bytes

from common import conditions, cpu_name
from tq_nb.transformer import build_model, strip_quant_
from tq_nb.deploy import convert_, int_mm, load_int, save_int
from tq_nb.quantize import quantize_
from tq_nb.binarize import binarize_

ROOT = Path(__file__).resolve().parent.parent
warnings.filterwarnings('ignore', message='.*(deprecated|requantized).*')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (fixed, so runs compare)')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--seq', type=int, default=64)
    p.add_argument('--repeats', type=int, default=50, help='timed rounds (each runs every variant once)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile variants')
    p.add_argument('--out', default=None, help='result JSON (default res/deploy/bench_<device>.json)')
    return p.parse_args(argv)




def quantized(model, bits):
    "A weight-quantized copy of `model`: all Linears at `bits` (symmetric, per channel, nearest); 1 bit = scaled sign."
    q = copy.deepcopy(model)
    if bits == 1: binarize_(q, 'all', method='scaled')
    else: quantize_(q, 'all', bits=bits, symmetric=True, per_channel=True, rounding='nearest')
    return q.eval()


def timed(fn, x, mask, device):
    if device == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter()
    fn(x, mask)
    if device == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv=None):
    args = parse_args(argv)
    dev = args.device
    if dev == 'cuda' and not torch.cuda.is_available(): sys.exit('--device cuda: no CUDA device available')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    before = conditions()

    fp32 = build_model('paper', n_classes=4, vocab_size=30522, seed=0).eval()
    fake8 = quantized(fp32, 8)
    ours = convert_(copy.deepcopy(fake8))
    variants = {'fp32': fp32, 'ours int8': ours}
    skipped = {}
    if dev == 'cpu':
        variants['pytorch dynamic int8'] = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)
    else:
        skipped['pytorch dynamic int8'] = 'quantize_dynamic runs on the CPU only'
    variants = {k: v.to(dev) for k, v in variants.items()}
    fake8 = fake8.to(dev)
    if not args.no_compile:
        variants['fp32 compiled'] = torch.compile(copy.deepcopy(variants['fp32']))
        variants['ours int8 compiled'] = torch.compile(copy.deepcopy(variants['ours int8']))

    g = torch.Generator().manual_seed(1)
    x = torch.randint(5, 30522, (args.batch, args.seq), generator=g).to(dev)
    mask = torch.ones(args.batch, args.seq, dtype=torch.bool, device=dev)
    times, compile_s = {k: [] for k in variants}, {}
    with torch.inference_mode():
        for k, f in variants.items():
            t = time.perf_counter()
            for _ in range(args.warmup): f(x, mask)
            compile_s[k] = time.perf_counter() - t
        names = list(variants)
        for r in range(args.repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:
                times[k].append(timed(variants[k], x, mask, dev))

        # how closely the int8 variants follow fp32 and the fake-quantized model, on 8 fresh batches
        xs = [torch.randint(5, 30522, (args.batch, args.seq), generator=g).to(dev) for _ in range(8)]
        ref, ref_fake = (torch.cat([m(b, mask) for b in xs]) for m in (variants['fp32'], fake8))
        fidelity = {}
        for k, m in variants.items():
            y = torch.cat([m(b, mask) for b in xs])
            fidelity[k] = dict(max_abs_vs_fp32=(y - ref).abs().max().item(),
                               agree_vs_fp32=(y.argmax(1) == ref.argmax(1)).float().mean().item(),
                               max_abs_vs_fake_quant=(y - ref_fake).abs().max().item(),
                               agree_vs_fake_quant=(y.argmax(1) == ref_fake.argmax(1)).float().mean().item())

    # would fusing Q, K and V into one GEMM pay? the three int8 products separately vs as one
    d = fp32.cfg.d_model
    a8 = torch.randint(-128, 128, (args.batch * args.seq, d), generator=g, dtype=torch.int8).to(dev)
    w3 = torch.randint(-128, 128, (3 * d, d), generator=g, dtype=torch.int8).to(dev)
    qkv = {'q, k, v separately': lambda *_: [int_mm(a8, w.t()) for w in w3.split(d)], 'q, k, v fused': lambda *_: int_mm(a8, w3.t())}
    qkv_times = {k: [] for k in qkv}
    for r in range(args.repeats + args.warmup):
        for k, f in qkv.items():
            t = timed(f, None, None, dev)
            if r >= args.warmup: qkv_times[k].append(t)

    # one layer alone, where the time goes: the bare int8 product, our compiled layer around it (quantize the
    # input per token, rescale the output), and PyTorch's dynamic int8 layer (fbgemm does all three in one call)
    layer_times, mods = {}, dict(ours.named_modules())
    if not args.no_compile and dev == 'cpu':
        for name in ('layers.0.mha.q', 'layers.0.ffn.w1', 'layers.0.ffn.w2'):
            il = mods[name]
            xin = torch.randn(args.batch * args.seq, il.in_features, generator=g)
            a8 = torch.randint(-128, 128, xin.shape, generator=g, dtype=torch.int8)
            dyn_lin = torch.ao.quantization.quantize_dynamic(nn.Sequential(dict(fp32.named_modules())[name]), {nn.Linear}, dtype=torch.qint8)
            fs = {'int_mm alone': lambda *_, il=il, a8=a8: int_mm(a8, il.w_int8.t(), split=il.split),
                  'ours compiled': lambda *_, f=torch.compile(il), xin=xin: f(xin),
                  'pytorch dynamic int8': lambda *_, f=dyn_lin, xin=xin: f(xin)}
            ts = {k: [] for k in fs}
            with torch.inference_mode():
                for r in range(args.repeats + args.warmup):
                    for k, f in fs.items():
                        t = timed(f, None, None, dev)
                        if r >= args.warmup: ts[k].append(t)
            layer_times[f'{name} ({il.in_features}->{il.out_features})'] = {k: statistics.median(v) * 1e3 for k, v in ts.items()}

    # checkpoint sizes: fp32 safetensors vs the low-bit integer checkpoints
    sizes = {'fp32': len(st_save({k: v.contiguous() for k, v in fp32.state_dict().items()}))}
    tmp = ROOT/'res'/'deploy'/'.size_probe.safetensors'
    for bits in (8, 2, 1, 4):   # int4 last: its file is kept for the load timing below
        save_int(convert_(quantized(fp32, bits).cpu()), tmp)
        sizes[f'int{bits}'] = tmp.stat().st_size
    # loading the int4 checkpoint: unpack every layer at load (eager) or at its first call (lazy)
    load = {}
    for lazy in (False, True):
        t = time.perf_counter(); m = load_int(tmp, lazy=lazy); t_load = time.perf_counter() - t
        with torch.inference_mode():
            t = time.perf_counter(); m(x.cpu(), mask.cpu()); t_first = time.perf_counter() - t
        load['lazy' if lazy else 'eager'] = dict(load_s=t_load, first_forward_s=t_first)
    tmp.unlink()
    emb = sum(p.numel() * p.element_size() for n, p in fp32.named_parameters() if n.startswith('embed.'))

    med = {k: statistics.median(v) for k, v in times.items()}
    best_ours = min((k for k in med if k.startswith('ours')), key=med.get)
    ratios = {f'fp32 / {best_ours}': med['fp32'] / med[best_ours]}
    if 'fp32 compiled' in med: ratios[f'fp32 compiled / {best_ours}'] = med['fp32 compiled'] / med[best_ours]
    if 'pytorch dynamic int8' in med:
        ratios[f'pytorch dynamic int8 / {best_ours}'] = med['pytorch dynamic int8'] / med[best_ours]
        ratios['pytorch dynamic int8 / ours int8 (eager)'] = med['pytorch dynamic int8'] / med['ours int8']
    # paired per round: both variants ran in the same round, so a burst of load on the shared CPU hits both
    def paired(num, den):
        r = sorted(a / b for a, b in zip(times[num], times[den]))
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        return dict(median=q[1], q1=q[0], q3=q[2], faster_rounds=sum(x > 1 for x in r), rounds=len(r))
    paired_ratios = {f'fp32 / {best_ours}': paired('fp32', best_ours)}
    if 'pytorch dynamic int8' in med: paired_ratios[f'pytorch dynamic int8 / {best_ours}'] = paired('pytorch dynamic int8', best_ours)
    ntok = args.batch * args.seq
    result = dict(
        command=' '.join([shlex.quote(Path(sys.executable).relative_to(ROOT).as_posix() if Path(sys.executable).is_relative_to(ROOT) else sys.executable),
                          'benchmarks/bench_deploy.py'] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]),
        date=datetime.datetime.now().isoformat(timespec='seconds'),
        settings=dict(vars(args), model="build_model('paper', n_classes=4, vocab_size=30522)", torch=torch.__version__,
                      device=torch.cuda.get_device_name() if dev == 'cuda' else cpu_name(), cpu_count=os.cpu_count()),
        conditions=dict(before=before, after=conditions()),
        latency_ms={k: dict(median=med[k] * 1e3, min=min(v) * 1e3, all=[t * 1e3 for t in v]) for k, v in times.items()},
        throughput={k: dict(sequences_per_s=args.batch / med[k], tokens_per_s=ntok / med[k]) for k in med},
        warmup_s=compile_s, ratios=ratios, paired_ratios=paired_ratios, skipped=skipped, fidelity=fidelity,
        checkpoint_bytes=sizes, embedding_bytes_fp32=emb, int4_load=load,
        layer_ms=layer_times,
        qkv_gemm_ms={k: dict(median=statistics.median(v) * 1e3, min=min(v) * 1e3) for k, v in qkv_times.items()},
        targets={f'fp32 / {best_ours} >= 2.0': ratios[f'fp32 / {best_ours}'] >= 2.0,
                 **({f'pytorch dynamic int8 / {best_ours} >= 1.0': ratios[f'pytorch dynamic int8 / {best_ours}'] >= 1.0}
                    if 'pytorch dynamic int8' in med else {})})
    out = Path(args.out) if args.out else ROOT/'res'/'deploy'/f'bench_{dev}.json'
    atomic_write_bytes(out, json.dumps(result, indent=1).encode())

    print(f"# {result['command']}\n# {result['settings']['device']}, {args.threads} thread(s), torch {torch.__version__}, "
          f"batch {args.batch} x {args.seq} tokens, {args.repeats} interleaved rounds; load before {before['loadavg']}, "
          f"after {result['conditions']['after']['loadavg']}")
    print(f"{'variant':<24}{'median ms':>10}{'min ms':>9}{'seq/s':>9}{'agree fp32':>11}{'agree fake':>11}")
    for k in med:
        print(f"{k:<24}{med[k]*1e3:>10.1f}{min(times[k])*1e3:>9.1f}{args.batch/med[k]:>9.0f}"
              f"{fidelity[k]['agree_vs_fp32']:>11.1%}{fidelity[k]['agree_vs_fake_quant']:>11.1%}")
    for k, v in skipped.items(): print(f'{k}: skipped ({v})')
    for k, v in ratios.items(): print(f'{k}: {v:.2f}x')
    for k, v in paired_ratios.items():
        print(f"{k}, per round: median {v['median']:.2f}x (quartiles {v['q1']:.2f}-{v['q3']:.2f}), "
              f"{v['faster_rounds']} of {v['rounds']} rounds faster")
    for k, v in result['targets'].items(): print(f"target {k}: {'met' if v else 'NOT met'}")
    print('checkpoint MB: ' + ', '.join(f'{k} {v/1e6:.1f}' for k, v in sizes.items()) + f' (fp32 embeddings alone {emb/1e6:.1f})')
    print('int4 checkpoint: ' + '; '.join(f"{k} unpack: load {v['load_s']*1e3:.0f} ms, first forward {v['first_forward_s']*1e3:.0f} ms"
                                         for k, v in load.items()))
    print('int8 GEMMs for Q, K, V (median / fastest ms): ' + ', '.join(f"{k} {v['median']:.2f} / {v['min']:.2f}"
                                                                   for k, v in result['qkv_gemm_ms'].items()))
    for k, v in layer_times.items(): print(f'one layer, {k}, median ms: ' + ', '.join(f'{n} {t:.2f}' for n, t in v.items()))
    print(f'wrote {out}')
    return result


if __name__ == '__main__': main()
