"""Property and integration tests of tq_nb.learner on the synthetic task with the tiny preset (seconds each):
the baseline learns, runs are reproducible, a latent run equals the full-precision run before its switch, a
run interrupted (by an exception, by Ctrl-C mid-epoch, or by SIGKILL of its process) resumes to exactly the
numbers of a run that never stopped, callbacks run in their order, distillation with alpha=0 is the plain run,
and the optimizer/schedule options train and resume exactly."""
import math, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from tq_nb.data import get_dls
from tq_nb.learner import (EVENTS, Callback, CheckpointCB, CSVLoggerCB, DistillCB, IRNetScheduleCB, LatentQuantCB, Learner,
                           ProgressCB, evaluate, get_device, get_rng_state, has_ir_net, init_from_checkpoint_, ir_net_schedule_,
                           kd_loss, make_sched, seed_everything_, set_rng_state_, warmup_cosine)
from tq_nb.transformer import QuantizedLinear, build_model, replace_linears_, select_linears

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def dls():
    return get_dls('synthetic', batch_size=32, max_len=32, vocab_size=256)


def tiny(dls, seed=0):
    return build_model('tiny', n_classes=dls.n_classes, vocab_size=dls.vocab_size, seed=seed)


def no_time(rows):
    return [{k: v for k, v in r.items() if 'time' not in k} for r in rows]


class RoundedLinear(QuantizedLinear):
    "A quantized layer following tq_nb's contract: latent `.weight`, `quant_enabled` switch."
    def forward(self, x):
        if not self.quant_enabled: return F.linear(x, self.weight, self.bias)
        w = torch.round(self.weight / 0.2) * 0.2
        return F.linear(x, self.weight + (w - self.weight).detach(), self.bias)


def rounded(dls, seed=0):
    m = tiny(dls, seed)
    def make(name, lin):
        new = RoundedLinear(lin.in_features, lin.out_features)
        new.load_state_dict(lin.state_dict())
        return new
    replace_linears_(m, 'all', make)
    return m


class Stop(Exception): pass


class StopAt(Callback):
    "Interrupts a run at the start of epoch `at` (0-based), before any other callback."
    order = -100
    def __init__(self, at): self.at = at
    def before_epoch(self, learn):
        if learn.epoch == self.at: raise Stop()


def fit(model, dls, **kw):
    kw = {'epochs': 4, 'lr': 3e-3, 'seed': 0, 'progress': False, **kw}
    learn = Learner(model, dls, **kw)
    learn.fit()
    return learn


@pytest.fixture(scope='module')
def reference(dls):
    "An uninterrupted full-precision run, the yardstick of the other tests."
    return fit(tiny(dls), dls)


def test_baseline_learns_synthetic_task(reference):
    s = reference.summary()
    assert s['best_valid_acc'] > 0.9 and s['test_acc_at_best'] > 0.9
    assert reference.history[0]['train_acc'] < reference.history[-1]['train_acc']


def test_same_seed_same_numbers_different_seed_different(dls, reference):
    again = fit(tiny(dls), dls)
    assert no_time(again.history) == no_time(reference.history)
    other = fit(tiny(dls), dls, seed=1)
    assert [r['train_loss'] for r in other.history] != [r['train_loss'] for r in reference.history]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 50))
def test_rng_state_round_trip(dls, seed, n):
    seed_everything_(seed, dls.train)
    for _ in range(n): random.random(); np.random.rand(); torch.rand(1)
    state = get_rng_state(dls.train)
    draw = lambda: (random.random(), float(np.random.rand()), torch.rand(3).tolist(), next(iter(dls.train))[2].tolist())
    first = draw()
    set_rng_state_(state, dls.train)
    assert draw() == first


def test_latent_equals_fp_before_switch(dls, reference):
    latent = fit(rounded(dls), dls, latent_epochs=2)
    assert [r['quant'] for r in latent.history] == [False, False, True, True]
    assert no_time(latent.history[:2]) == no_time(reference.history[:2])
    assert latent.history[2]['train_loss'] != reference.history[2]['train_loss']


def test_latent_with_real_quantizer(dls, reference):
    quantize = pytest.importorskip('tq_nb.quantize')
    m = tiny(dls)
    quantize.quantize_(m, 'all', bits=2)
    latent = fit(m, dls, latent_epochs=1)
    assert no_time(latent.history[:1]) == no_time(reference.history[:1])
    assert latent.history[1]['quant'] and not latent.history[0]['quant']


def test_resume_after_exception_equals_uninterrupted(dls, reference, tmp_path):
    learn = Learner(tiny(dls), dls, epochs=4, lr=3e-3, seed=0, progress=False, ckpt_dir=tmp_path, log_path=tmp_path/'log.csv',
                    cbs=[StopAt(3)])
    with pytest.raises(Stop): learn.fit()
    assert torch.load(tmp_path/'last.pt', weights_only=True)['epoch'] == 3
    resumed = Learner(tiny(dls, seed=5), dls, epochs=4, lr=3e-3, seed=0, progress=False, ckpt_dir=tmp_path,
                      log_path=tmp_path/'log.csv')
    resumed.fit()
    assert no_time(resumed.history) == no_time(reference.history)
    assert no_time(resumed.log) == no_time(reference.log)
    df = pd.read_csv(tmp_path/'log.csv')
    assert len(df) == len(reference.log) + len(reference.history)


# the test wraps opt.step to interrupt it, which the LR scheduler notices and warns about
@pytest.mark.filterwarnings('ignore:Seems like `optimizer.step\\(\\)` has been overridden')
def test_ctrl_c_mid_epoch_resumes_exactly(dls, reference, tmp_path):
    "KeyboardInterrupt in the middle of epoch 2: the partial epoch is redone from the epoch-1 checkpoint."
    learn = Learner(tiny(dls), dls, epochs=4, lr=3e-3, seed=0, progress=False, ckpt_dir=tmp_path)
    calls = {'n': 0}
    orig_step = learn.opt.step
    def step(*a, **kw):
        calls['n'] += 1
        if calls['n'] == len(dls.train) + 7: raise KeyboardInterrupt
        return orig_step(*a, **kw)
    learn.opt.step = step
    with pytest.raises(KeyboardInterrupt): learn.fit()
    assert torch.load(tmp_path/'last.pt', weights_only=True)['epoch'] == 1
    resumed = Learner(tiny(dls), dls, epochs=4, lr=3e-3, seed=0, progress=False, ckpt_dir=tmp_path)
    resumed.fit()
    assert no_time(resumed.history) == no_time(reference.history)
    for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()): assert torch.equal(a, b)


CHILD = textwrap.dedent("""
    import sys, time, torch
    from tq_nb.data import get_dls
    from tq_nb.learner import Callback, Learner
    from tq_nb.transformer import build_model
    class Slow(Callback):
        def before_epoch(self, learn):
            if learn.epoch >= 1: time.sleep(30)   # wait here to be killed
    dls = get_dls('synthetic', batch_size=32, max_len=32, vocab_size=256)
    m = build_model('tiny', n_classes=dls.n_classes, vocab_size=dls.vocab_size, seed=0)
    Learner(m, dls, epochs=4, lr=3e-3, seed=0, progress=False, ckpt_dir=sys.argv[1], cbs=[Slow()]).fit()
""")


def test_sigkill_resumes_exactly(dls, reference, tmp_path):
    p = subprocess.Popen([sys.executable, '-c', CHILD, str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not (tmp_path/'last.pt').exists():
            assert p.poll() is None, 'child ended early'
            assert time.time() < deadline, 'no checkpoint after 120 s'
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGKILL); p.wait()
    assert torch.load(tmp_path/'last.pt', weights_only=True)['epoch'] == 1
    resumed = Learner(tiny(dls), dls, epochs=4, lr=3e-3, seed=0, progress=False, ckpt_dir=tmp_path)
    resumed.fit()
    assert no_time(resumed.history) == no_time(reference.history)


def test_best_checkpoint_is_selected_epoch_and_inits_a_quantized_model(dls, tmp_path):
    learn = fit(tiny(dls), dls, ckpt_dir=tmp_path)
    best = torch.load(tmp_path/'best.pt', weights_only=True)
    assert best['epoch'] == learn.summary()['best_epoch']
    q = rounded(dls, seed=3)
    assert init_from_checkpoint_(q, tmp_path/'best.pt') == []
    for k, v in best['model'].items(): assert torch.equal(q.state_dict()[k], v)


def test_resume_refuses_other_settings(dls, tmp_path):
    fit(tiny(dls), dls, epochs=2, ckpt_dir=tmp_path)
    with pytest.raises(ValueError, match=r"differs in \['epochs', 'milestones'\]"):
        Learner(tiny(dls), dls, epochs=3, lr=3e-3, progress=False, ckpt_dir=tmp_path).fit()


def test_finished_run_fit_again_trains_nothing(dls, tmp_path):
    learn = fit(tiny(dls), dls, epochs=2, ckpt_dir=tmp_path)
    again = Learner(tiny(dls, seed=9), dls, epochs=2, lr=3e-3, progress=False, ckpt_dir=tmp_path)
    again.opt.step = lambda *a, **k: pytest.fail('trained again')
    assert again.fit() == learn.summary()


def test_ir_net_schedule_called_per_epoch(dls):
    binarize = pytest.importorskip('tq_nb.binarize')
    m = tiny(dls)
    binarize.binarize_(m, 'all|~cls.final', method='irnet')
    assert has_ir_net(m)
    seen = []
    class Spy(Callback):   # order 0: after IRNetScheduleCB (order -10) has set this epoch's t
        def before_epoch(self, learn): seen.append(next(x.t for x in m.modules() if getattr(x, 'method', None) == 'irnet'))
    Learner(m, dls, epochs=3, lr=3e-3, progress=False, cbs=[Spy()]).fit()
    assert seen == [binarize.ir_net_t(e, 3)[0] for e in range(3)]
    assert not has_ir_net(tiny(dls)) and not ir_net_schedule_(tiny(dls), 0, 3)


def test_ir_net_schedule_per_step_rises_from_t_min_to_t_max(dls):
    binarize = pytest.importorskip('tq_nb.binarize')
    m = tiny(dls)
    binarize.binarize_(m, 'all|~cls.final', method='irnet_scaled')
    seen = []
    m.layers[0].ffn.w1.register_forward_pre_hook(lambda mod, inp: seen.append(mod.t) if mod.training else None)
    Learner(m, dls, epochs=2, lr=3e-3, ir_net_per='step', progress=False).fit()
    steps = 2 * len(dls.train)
    assert seen == [binarize.ir_net_t(binarize.ir_net_step_epoch(s, steps, 2), 2)[0] for s in range(steps)]
    assert math.isclose(seen[0], 0.1) and math.isclose(seen[-1], 10.0)


def test_bad_arguments(dls):
    m = tiny(dls)
    with pytest.raises(ValueError, match=r"device must be one of \['cpu'"): Learner(m, dls, device='cuda:9')
    with pytest.raises(ValueError, match='latent_epochs must be an int in 0..3'): Learner(m, dls, epochs=4, latent_epochs=4)
    with pytest.raises(ValueError, match='seed must be an int >= 0'): Learner(m, dls, seed=-2)
    with pytest.raises(ValueError, match='log_every'): Learner(m, dls, log_every=0)
    with pytest.raises(ValueError, match='device must be one of'): get_device('gpu')


def test_evaluate_restores_mode(dls):
    m = tiny(dls).train()
    loss, acc = evaluate(m, dls.valid)
    assert m.training and 0 <= acc <= 1 and loss > 0


def test_events_run_in_order_and_callbacks_by_order(dls, tmp_path):
    seen = []
    class Rec(Callback):
        def __init__(self, name, order): self.name, self.order = name, order
    for e in EVENTS: setattr(Rec, e, lambda self, learn, e=e: seen.append((e, self.name)))
    learn = Learner(tiny(dls), dls, epochs=1, progress=False, ckpt_dir=tmp_path, cbs=[Rec('late', 50), Rec('early', -50)])
    assert [type(cb).__name__ for cb in sorted(learn.cbs, key=lambda c: c.order)] == [
        'Rec', 'CheckpointCB', 'IRNetScheduleCB', 'CSVLoggerCB', 'Rec']
    learn.fit()
    n = len(dls.train)
    assert [e for e, name in seen if name == 'early'] == (['before_fit', 'before_epoch'] + ['before_batch', 'after_loss', 'after_step'] * n
                                                          + ['after_epoch', 'after_fit'])
    assert [name for e, name in seen if e == 'after_epoch'] == ['early', 'late']
    assert [type(cb) for cb in Learner(tiny(dls), dls, epochs=2, latent_epochs=1, ckpt_dir=tmp_path).cbs] == [
        LatentQuantCB, IRNetScheduleCB, CSVLoggerCB, CheckpointCB, ProgressCB]


def test_latent_callback_in_cbs_equals_latent_epochs(dls):
    a = fit(rounded(dls), dls, epochs=3, latent_epochs=1)
    b = fit(rounded(dls), dls, epochs=3, cbs=[LatentQuantCB(1)])
    assert no_time(a.history) == no_time(b.history) and a.signature() == b.signature()


def test_distill_alpha_0_is_the_plain_run(dls, reference):
    teacher = tiny(dls, seed=3).train()
    kd = fit(tiny(dls), dls, cbs=[DistillCB(teacher, T=3.0, alpha=0.0)])
    assert no_time(kd.history) == no_time(reference.history) and no_time(kd.log) == no_time(reference.log)
    for a, b in zip(kd.model.state_dict().values(), reference.model.state_dict().values()): assert torch.equal(a, b)
    assert not teacher.training


def test_distill_trains_towards_the_teacher_and_leaves_it_alone(dls, reference, tmp_path):
    teacher = reference.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    kd = fit(rounded(dls), dls, epochs=2, ckpt_dir=tmp_path, cbs=[DistillCB(teacher, T=2.0, alpha=0.7)])
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert kd.signature()['distill'] == dict(T=2.0, alpha=0.7)
    plain = fit(rounded(dls), dls, epochs=2)
    assert kd.history[0]['train_loss'] != plain.history[0]['train_loss']
    with pytest.raises(ValueError, match=r"differs in \['distill'\]"):   # resume with other distillation settings, or none
        Learner(rounded(dls), dls, epochs=2, lr=3e-3, progress=False, ckpt_dir=tmp_path, cbs=[DistillCB(teacher, alpha=0.5)]).fit()
    with pytest.raises(ValueError, match=r"differs in \['distill'\]"):
        Learner(rounded(dls), dls, epochs=2, lr=3e-3, progress=False, ckpt_dir=tmp_path).fit()


def test_kd_loss_by_hand():
    s, t, T = torch.tensor([[1., 0.]]), torch.tensor([[0., 0.]]), 1.0
    q = math.exp(1) / (math.exp(1) + 1)   # softmax of the student; the teacher is uniform
    assert math.isclose(kd_loss(s, t, T).item(), 0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q)), rel_tol=1e-6)
    assert math.isclose(kd_loss(2 * s, 2 * t, 2.0).item(), 4 * kd_loss(s, t, 1.0).item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match='T must be a number > 0'): DistillCB(nn.Identity(), T=-1)
    with pytest.raises(ValueError, match='alpha must be a finite number in 0..1'): DistillCB(nn.Identity(), alpha=-0.1)
    with pytest.raises(ValueError, match='teacher must be a torch nn.Module'): DistillCB(None)


def test_default_optimizer_and_schedule_are_the_studys(dls):
    learn = Learner(tiny(dls), dls, epochs=6, lr=2e-3, weight_decay=0.01)
    assert type(learn.opt) is torch.optim.Adam and type(learn.sched) is torch.optim.lr_scheduler.MultiStepLR
    assert learn.sched_per == 'epoch' and learn.sched.milestones == {4: 1} and learn.opt.defaults['weight_decay'] == 0.01
    assert list(learn.signature()) == ['epochs', 'lr', 'milestones', 'gamma', 'clip', 'weight_decay', 'seed', 'latent_epochs', 'params']


@pytest.mark.filterwarnings('ignore:Seems like `optimizer.step\\(\\)` has been overridden')
@pytest.mark.parametrize('opt,sched', [('adamw', 'cosine'), ('adam', 'onecycle')])
def test_per_step_schedules_train_log_their_rate_and_resume_exactly(dls, tmp_path, opt, sched):
    kw = dict(epochs=2, opt=opt, sched=sched, log_every=5)
    whole = fit(tiny(dls), dls, **kw)
    n = len(dls.train)
    if sched == 'cosine':
        w = round(0.1 * 2 * n)
        assert [r['lr'] for r in whole.log] == pytest.approx([3e-3 * warmup_cosine(s - 1, 2 * n, w) for s in range(5, 2 * n + 1, 5)])
    else: assert max(r['lr'] for r in whole.log) == pytest.approx(3e-3, rel=0.01)
    assert whole.signature()['sched'] == sched and ('opt' in whole.signature()) == (opt != 'adam')
    learn = Learner(tiny(dls), dls, epochs=2, lr=3e-3, seed=0, progress=False, ckpt_dir=tmp_path, log_every=5, opt=opt, sched=sched)
    calls, orig_step = {'n': 0}, learn.opt.step
    def step(*a, **k):
        calls['n'] += 1
        if calls['n'] == n + 7: raise KeyboardInterrupt
        return orig_step(*a, **k)
    learn.opt.step = step
    with pytest.raises(KeyboardInterrupt): learn.fit()
    resumed = fit(tiny(dls, seed=4), dls, ckpt_dir=tmp_path, **kw)
    assert no_time(resumed.history) == no_time(whole.history) and no_time(resumed.log) == no_time(whole.log)
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()): assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"differs in \['milestones', 'sched', 'warmup'\]"):
        Learner(tiny(dls), dls, epochs=2, lr=3e-3, progress=False, ckpt_dir=tmp_path, opt=opt).fit()


def test_schedule_arguments_are_checked(dls):
    m = tiny(dls)
    with pytest.raises(ValueError, match="opt must be one of \\('adam', 'adamw'\\), got 'sgd'"): Learner(m, dls, opt='sgd')
    with pytest.raises(ValueError, match="sched must be one of"): Learner(m, dls, sched='linear')
    with pytest.raises(ValueError, match="milestones apply to sched='multistep' only"): Learner(m, dls, sched='onecycle', milestones=[1])
    with pytest.raises(ValueError, match='warmup applies to'): Learner(m, dls, warmup=0.2)
    with pytest.raises(ValueError, match='warmup must be a finite number in 0..1'): Learner(m, dls, sched='cosine', warmup=2)
    with pytest.raises(ValueError, match='cbs must be Callback instances'): Learner(m, dls, cbs=[lambda learn: None])
    o = torch.optim.Adam([nn.Parameter(torch.ones(1))])
    assert make_sched('cosine', o, 1, 10, warmup=0.0)[1] == 'step'
