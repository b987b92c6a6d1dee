"""Cost of full quantization in training: one AdamW step (forward, backward, update) of the `quick` model with
every Linear's weights and inputs fake-quantized (tq_nb.fully_quantize.fully_quantize_, W8A8, EMA ranges,
calibrated first) against the same step in full precision. Target (issue 4): at most 1.25x. Also shown, without
a target: learned step sizes (LSQ), the attention inputs quantized too, and W4A4.

The variants run side by side in one process, interleaved in a shuffled order in every round, so machine
load hits them alike; we report the median over rounds of each round's time ratio, and the ratio of the
best times. Usage: python benchmarks/bench_fully_quantize.py [--rounds 15] [--steps 5] [--threads N]
"""
import copy
from common import parse_args, quick_batch, time_and_report, verdict
from tq_nb.transformer import build_model
from tq_nb.fully_quantize import fully_quantize_, calibrate_

def main(argv=None):
    a = parse_args(__doc__, target=1.25, argv=argv)
    cfg, batch = quick_batch()
    base = build_model('quick', n_classes=26, seed=0)
    models = {'fp32': base}
    for name, kw in {'W8A8': {}, 'W8A8 lsq': dict(lsq=True), 'W8A8 attn qkpv': dict(attn='qkpv'),
                     'W4A4': dict(w_bits=4, a_bits=4)}.items():
        models[name] = copy.deepcopy(base); fully_quantize_(models[name], **kw)
        calibrate_(models[name], [batch])
    ratios = time_and_report(models, batch, cfg, a)
    verdict('full-quant (W8A8) step / fp32 step', ratios['W8A8'], a.target)
    return ratios['W8A8']

if __name__ == '__main__': main()
