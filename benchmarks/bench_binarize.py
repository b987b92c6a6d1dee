"""Cost of binarization in training: one AdamW step (forward, backward, update) of the `quick` model with all but
the final layer binarized (tq_nb.binarize.binarize_, pattern ALL), basic and IR-Net, against the same step in
full precision. Target (issue 5): at most 1.3x for basic and IR-Net (the original measured 1.75x and 2.5x).
Scaled sign and 1-bit activations (W1A1) are timed too, for information.

The variants run side by side in one process, interleaved in a shuffled order in every round, so machine
load hits them alike; we report the median over rounds of each round's time ratio, and the ratio of the
best times. Usage: python benchmarks/bench_binarize.py [--rounds 15] [--steps 5] [--threads N]
"""
import copy
from common import parse_args, quick_batch, time_and_report, verdict
from tq_nb.transformer import build_model
from tq_nb.binarize import binarize_, set_ir_net_epoch_

def main(argv=None):
    a = parse_args(__doc__, target=1.3, argv=argv)
    cfg, batch = quick_batch()
    base = build_model('quick', n_classes=26, seed=0)
    models = {'fp32': base}
    for name, method, act in (('basic', 'basic', False), ('irnet', 'irnet', False), ('scaled', 'scaled', False),
                              ('basic W1A1', 'basic', True), ('irnet W1A1', 'irnet', True)):
        models[name] = copy.deepcopy(base); binarize_(models[name], 'ALL', method, binarize_act=act)
        set_ir_net_epoch_(models[name], 3, 6)  # mid-schedule t, k (the cost does not depend on them)
    ratios = time_and_report(models, batch, cfg, a, note=', pattern ALL (13 of 14 Linears binarized)')
    for k in ('basic', 'irnet'): verdict(f'{k} binarized step / fp32 step', ratios[k], a.target)
    return ratios

if __name__ == '__main__': main()
