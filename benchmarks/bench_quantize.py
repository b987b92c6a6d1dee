"""Cost of weight-only fake quantization in training: one AdamW step (forward, backward, update) of the `quick`
model with every Linear quantized (tq_nb.quantize.quantize_) against the same step in full precision.
Target (issue 3): at most 1.15x.

The variants run side by side in one process, interleaved in a shuffled order in every round, so machine
load hits them alike; we report the median over rounds of each round's time ratio, and the ratio of the
best times. Usage: python benchmarks/bench_quantize.py [--rounds 15] [--steps 5] [--threads N]
"""
import copy
from common import parse_args, quick_batch, time_and_report, verdict
from tq_nb.transformer import build_model
from tq_nb.quantize import quantize_

def main(argv=None):
    a = parse_args(__doc__, target=1.15, argv=argv)
    cfg, batch = quick_batch()
    base = build_model('quick', n_classes=26, seed=0)
    models = {'fp32': base}
    for name, kw in {'w8 per-tensor': {}, 'w8 per-channel': dict(per_channel=True),
                     'w4 stochastic': dict(bits=4, rounding='stochastic')}.items():
        models[name] = copy.deepcopy(base); quantize_(models[name], **kw)
    ratios = time_and_report(models, batch, cfg, a)
    verdict('weight-only fake-quant step / fp32 step', ratios['w8 per-tensor'], a.target)
    return ratios['w8 per-tensor']

if __name__ == '__main__': main()
