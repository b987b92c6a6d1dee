"""Tests of tq_nb.experiments on the synthetic task with the tiny preset: the registry covers the original study,
every experiment builds, the runner skips finished runs, never leaves a partial result (even when its process is
killed while writing), resumes killed runs exactly, and bad names fail with the valid values listed."""
import json, os, re, signal, subprocess, sys, textwrap, time
from unittest.mock import ANY
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

import tq_nb.data
from tq_nb.data import get_dls
from tq_nb.experiments import (EXPERIMENTS, ORIGINAL_ROWS, SUITES, Experiment, build_variant, experiment_from_flags,
                               get_experiment, get_suite, load_results, result_path, run_experiment, run_suite,
                               summary_table, suite_experiments)
from tq_nb.learner import Learner
from tq_nb.transformer import PRESETS, select_linears

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FP = replace(get_experiment('fp'), dataset='synthetic')
# the original study's table (DESIGN.md): every number must be a row of the registry and of the main suite
ORIGINAL = [91.8, 91.6, 91.8, 91.8, 83.2, 83.7, 85.6, 86.9, 91.4, 89.8, 25.0, 89.3, 86.7, 86.2, 84.9, 87.9, 88.6, 88.9]


def kw(tmp, **extra):
    return dict(preset='tiny', epochs=2, res_dir=tmp/'res', ckpt_root=tmp/'ckpt', progress=False, device='cpu', **extra)


@pytest.fixture(scope='module')
def done(tmp_path_factory):
    "One finished full-precision run: (tmp folder, result)."
    tmp = tmp_path_factory.mktemp('done')
    return tmp, run_experiment(FP, 0, **kw(tmp))


def test_registry_covers_the_original_table():
    assert get_suite('main').experiments == ORIGINAL_ROWS
    assert sorted(get_experiment(n).original for n in ORIGINAL_ROWS) == sorted(ORIGINAL)
    for name in ('w4a8', 'w4a4', 'w8a8_lsq', 'w4a8_lsq', 'w4a4_lsq', 'irnet', 'irnet_pre', 'irnet_latent', 'bin_scaled'):
        assert name in EXPERIMENTS
    assert {'main', 'exp1', 'exp2', 'exp3', 'vision_exp1', 'vision_exp2'} <= set(SUITES)
    assert {e.dataset for e in suite_experiments('vision_exp1')} == {'fashion_mnist'}


@pytest.fixture(scope='module')
def small_dls(): return get_dls('synthetic', batch_size=8, max_len=32, vocab_size=256)


@pytest.mark.parametrize('name', list(EXPERIMENTS))
def test_every_experiment_builds_and_runs_a_batch(name, small_dls):
    e = get_experiment(name)
    if e.method != 'fp': pytest.importorskip({'quantize': 'tq_nb.quantize', 'fully': 'tq_nb.fully_quantize',
                                               'binarize': 'tq_nb.binarize'}[e.method])
    if e.pattern is not None and e.pattern.isupper(): pytest.importorskip('tq_nb.binarize')
    dls = small_dls
    m = build_variant(replace(e, dataset='synthetic'), dls, 'tiny', seed=0)
    x, mask, y = next(iter(dls.train))
    assert m(x, mask).shape == (len(y), dls.n_classes)
    n_quant = sum(hasattr(l, 'quant_enabled') for l in select_linears(m).values())
    assert (n_quant == 0) == (e.method == 'fp')


def test_result_has_everything(done):
    tmp, r = done
    path = tmp/'res/synthetic/tiny_e2/fp/seed0.json'
    assert json.loads(path.read_text()) == r
    assert path.with_suffix('.csv').exists()
    assert r['command'].startswith('tq_train --exp_name fp --dataset synthetic --preset tiny --seed 0 --epochs 2')
    assert {'tq_nb', 'torch', 'python'} <= set(r['versions']) and r['device'] == 'cpu' and r['wall_time'] > 0
    assert [h['epoch'] for h in r['history']] == [1, 2] and all('valid_acc' in h and 'test_acc' in h for h in r['history'])
    assert r['summary']['epochs_done'] == 2 and not r['resumed']
    assert not (tmp/'ckpt/synthetic/tiny_e2/fp/seed0/last.pt').exists()
    assert (tmp/'ckpt/synthetic/tiny_e2/fp/seed0/best.pt').exists()


def test_runner_skips_completed_runs(done, monkeypatch):
    tmp, r = done
    path = tmp/'res/synthetic/tiny_e2/fp/seed0.json'
    before = path.read_bytes(), path.stat().st_mtime_ns
    monkeypatch.setattr(Learner, 'fit', lambda self, *a, **k: pytest.fail('trained a finished run'))
    assert run_experiment(FP, 0, **kw(tmp)) == r
    assert run_suite(replace(get_suite('smoke'), experiments=('fp',)), 'tiny', [0], tmp/'res', tmp/'ckpt', progress=False) == [r]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_failed_write_leaves_previous_result(done, monkeypatch):
    tmp, r = done
    path = tmp/'res/synthetic/tiny_e2/fp/seed0.json'
    before = path.read_bytes()
    def fail(src, dst):
        if str(dst).endswith('.json'): raise OSError('disk full')
        return os.rename(src, dst)
    monkeypatch.setattr(tq_nb.data.os, 'replace', fail)
    with pytest.raises(OSError, match='disk full'): run_experiment(FP, 0, redo=True, **kw(tmp))
    assert path.read_bytes() == before
    assert not list(path.parent.glob('.*.tmp'))


KILL_WRITE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import tq_nb.data
    from dataclasses import replace
    from tq_nb.experiments import get_experiment, run_experiment
    tmp, redo = Path(sys.argv[1]), sys.argv[2] == 'redo'
    real_fsync = os.fsync
    def slow_fsync(fd):
        real_fsync(fd)
        if os.readlink(f'/proc/self/fd/{fd}').endswith('.tmp') and '.seed0.json.' in os.readlink(f'/proc/self/fd/{fd}'):
            (tmp/'writing').touch()
            time.sleep(120)   # killed here: the new result is in a temporary file, not yet renamed
    tq_nb.data.os.fsync = slow_fsync
    run_experiment(replace(get_experiment('fp'), dataset='synthetic'), 0, preset='tiny', epochs=2, res_dir=tmp/'res',
                   ckpt_root=tmp/'ckpt', progress=False, device='cpu', redo=redo)
""")


def _run_until(tmp, marker, args, timeout=300):
    "Start the child script, wait for `marker` to appear, then SIGKILL it."
    p = subprocess.Popen([sys.executable, '-c', *args], cwd=ROOT)
    try:
        deadline = time.time() + timeout
        while not marker.exists():
            assert p.poll() is None, 'child ended before being killed'
            assert time.time() < deadline, f'no {marker.name} after {timeout} s'
            time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGKILL); p.wait()


@pytest.mark.skipif(not Path('/proc/self/fd').exists(), reason='needs /proc to see which file is being written')
def test_killed_while_writing_never_leaves_a_partial_result(tmp_path):
    path = tmp_path/'res/synthetic/tiny_e2/fp/seed0.json'
    # first run killed while writing its result: no result file, and the rerun finishes from the checkpoint
    _run_until(tmp_path, tmp_path/'writing', [KILL_WRITE, str(tmp_path), 'first'])
    assert not path.exists() and list(path.parent.glob('.seed0.json.*.tmp'))
    assert load_results(tmp_path/'res').empty
    r = run_experiment(FP, 0, **kw(tmp_path))
    assert r['resumed'] and json.loads(path.read_text()) == r
    # a redo killed while writing: the previous result stays, whole
    before = path.read_bytes()
    (tmp_path/'writing').unlink()
    _run_until(tmp_path, tmp_path/'writing', [KILL_WRITE, str(tmp_path), 'redo'])
    assert path.read_bytes() == before
    assert len(load_results(tmp_path/'res')) == 1


KILL_TRAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dataclasses import replace
    from tq_nb.learner import Learner
    from tq_nb.experiments import get_experiment, run_experiment
    tmp = Path(sys.argv[1])
    orig = Learner.train_epoch
    def slow(self, epoch, mb=None):
        if epoch >= 1: time.sleep(120)   # killed here, after the first epoch's checkpoint
        return orig(self, epoch, mb)
    Learner.train_epoch = slow
    run_experiment(replace(get_experiment('fp'), dataset='synthetic'), 0, preset='tiny', epochs=2, res_dir=tmp/'res',
                   ckpt_root=tmp/'ckpt', progress=False, device='cpu')
""")


def test_killed_run_resumes_to_the_same_result(done, tmp_path):
    _run_until(tmp_path, tmp_path/'ckpt/synthetic/tiny_e2/fp/seed0/last.pt', [KILL_TRAIN, str(tmp_path)])
    assert not result_path(FP, 0, 'tiny_e2', tmp_path/'res').exists()
    r = run_experiment(FP, 0, **kw(tmp_path))
    strip = lambda h: [{k: v for k, v in row.items() if 'time' not in k} for row in h]
    assert r['resumed'] and strip(r['history']) == strip(done[1]['history'])
    assert pd.read_csv(tmp_path/'res/synthetic/tiny_e2/fp/seed0.csv').drop(columns=['time', 'epoch_time']).equals(
        pd.read_csv(done[0]/'res/synthetic/tiny_e2/fp/seed0.csv').drop(columns=['time', 'epoch_time']))


def test_pretrained_run_trains_and_reuses_the_fp_checkpoint(done, monkeypatch):
    pytest.importorskip('tq_nb.binarize')
    tmp, fp = done
    r = run_experiment(replace(get_experiment('bin_pre'), dataset='synthetic'), 0, **kw(tmp))
    assert r['config']['experiment']['pretrained']
    calls = []
    monkeypatch.setattr(tq_nb.experiments, 'init_from_checkpoint_', lambda m, p: calls.append(Path(p)) or [])
    run_experiment(replace(get_experiment('bin_pre'), dataset='synthetic'), 0, redo=True, **kw(tmp))
    assert calls == [tmp/'ckpt/synthetic/tiny_e2/fp/seed0/best.pt']
    assert json.loads((tmp/'res/synthetic/tiny_e2/fp/seed0.json').read_text()) == fp


def test_a_run_is_trained_by_one_process_at_a_time(done, tmp_path):
    import socket
    from tq_nb.experiments import RunInProgress
    lock = tmp_path/'ckpt/synthetic/tiny_e2/fp/seed0.lock'
    lock.parent.mkdir(parents=True)
    lock.write_text(f'{os.getppid()} {socket.gethostname()}')   # our parent is alive: someone else's run
    with pytest.raises(RunInProgress, match='is being trained by process'): run_experiment(FP, 0, **kw(tmp_path))
    assert run_suite(replace(get_suite('smoke'), experiments=('fp',)), 'tiny', [0], tmp_path/'res', tmp_path/'ckpt',
                     progress=False) == []
    lock.write_text(f'999999999 {socket.gethostname()}')       # a dead process's lock is taken over
    assert run_experiment(FP, 0, **kw(tmp_path))['summary'] == done[1]['summary'] | {'train_time': ANY}
    assert not lock.exists()


def test_unknown_names_list_valid_values(tmp_path):
    with pytest.raises(ValueError, match=r"experiment must be one of \['fp', 'w8'"): get_experiment('w16')
    with pytest.raises(ValueError, match=r"suite must be one of \['main'"): get_suite('nope')
    with pytest.raises(ValueError, match=r"dataset must be one of \('wordnet'"): replace(FP, dataset='mnist')
    with pytest.raises(ValueError, match=re.escape(f"preset must be one of {list(PRESETS)}, got 'big'")): run_experiment('fp', preset='big')
    with pytest.raises(ValueError, match=r"device must be one of \['cpu'"): run_experiment(FP, 0, **{**kw(tmp_path), 'device': 'cuda:3'})


def test_suite_skips_a_latent_switch_beyond_its_epochs(tmp_path, capsys):
    from tq_nb.experiments import Suite
    s = Suite('fits', ('w8a8_latent3',), dataset='synthetic', epochs=2)
    assert run_suite(s, preset='tiny', seeds=[0], res_dir=tmp_path/'res', ckpt_root=tmp_path/'ckpt') == []
    assert 'skipped, its 3 full-precision epochs leave none of the 2 to quantize' in capsys.readouterr().out
    assert not any((tmp_path/'res').rglob('*.json'))

def _cli(*args, env=None):
    return subprocess.run([str(BIN/args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_cli_errors_and_list():
    r = _cli('tq_train', '--dataset', 'mnist')
    assert r.returncode == 2 and "invalid choice: 'mnist'" in r.stderr and "'wordnet'" in r.stderr
    r = _cli('tq_train', '--quant_type', 'binarization', '--quant_method', 'ir', '--bit_num', '8', '--quant_pattern', 'ALL')
    assert r.returncode == 2 and 'binarization takes no --bit_num' in r.stderr
    r = _cli('tq_train', '--device', 'tpu')
    assert r.returncode == 2 and "device must be one of ['cpu'" in r.stderr
    r = _cli('tq_experiments', '--suite', 'nope')
    assert r.returncode == 2 and "suite must be one of ['main'" in r.stderr
    r = _cli('tq_experiments', '--list')
    assert r.returncode == 0 and 'main' in r.stdout and 'w8a8_latent' in r.stdout


def test_tq_train_cli_writes_a_result(tmp_path):
    r = _cli('tq_train', '--quant_type', 'quantization', '--quant_method', 'basic', '--bit_num', '8', '--dataset', 'synthetic',
             '--preset', 'tiny', '--epochs', '2', '--device', 'cpu', '--quiet', '--res_dir', str(tmp_path/'res'),
             env={'TQ_NB_DATA': str(tmp_path/'data')})
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path/'res/synthetic/tiny_e2/w8/seed0.json').read_text())
    assert res['command'] == (f"tq_train --quant_type quantization --quant_method basic --bit_num 8 --dataset synthetic "
                              f"--preset tiny --epochs 2 --device cpu --quiet --res_dir {tmp_path/'res'}")
    assert res['config']['experiment']['method'] == 'quantize' and res['config']['experiment']['bits'] == 8


FLAGS = dict(quant_type=st.sampled_from([None, 'quantization', 'binarization']),
             quant_method=st.sampled_from([None, 'basic', 'fully', 'ir', 'scaled']),
             bit_num=st.sampled_from([None, 8, 4, 2]), a_bit_num=st.sampled_from([None, 8, 4]),
             quant_pattern=st.sampled_from([None, 'MHA', 'FFN', 'CLS', 'ALL', 'ALL_QK', 'QK']),
             lsq=st.booleans(), pre_trained=st.booleans(), latent=st.booleans())


@settings(max_examples=300, deadline=None)
@given(**FLAGS)
def test_flags_give_a_valid_experiment_or_a_reason(**flags):
    try: e = experiment_from_flags(**flags)
    except ValueError as err:
        assert str(err) and 'another recipe' not in str(err)
        return
    assert isinstance(e, Experiment)
    assert (e.method == 'fp') == (flags['quant_type'] is None)
    assert e.pretrained == flags['pre_trained'] and (e.latent_epochs > 0) == flags['latent']
    if flags['quant_type'] == 'binarization': assert e.method == 'binarize' and e.bits is None


def test_summary_table_mean_and_std(tmp_path):
    accs = [0.8, 0.9, 0.85]
    for seed, a in enumerate(accs):
        p = tmp_path/f'wordnet/quick/w8/seed{seed}.json'
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(dict(dataset='wordnet', tag='quick', experiment='w8', seed=seed, original=91.6, wall_time=1.0,
                                     summary=dict(test_acc_at_best=a, test_acc_last=a - 0.01, best_valid_acc=a + 0.01))))
    (tmp_path/'wordnet/quick/w8/.seed3.json.x.tmp').write_text('{partial')
    df = load_results(tmp_path)
    assert len(df) == 3
    t = summary_table(df).loc[('wordnet', 'quick', 'w8')]
    assert t.seeds == 3 and t.original == 91.6
    assert abs(t.test_acc_at_best_mean - pd.Series(accs).mean()) < 1e-12
    assert abs(t.test_acc_at_best_std - pd.Series(accs).std()) < 1e-12


def test_run_identifies_a_run_and_rejects_bad_arguments(tmp_path):
    from tq_nb.experiments import Run, run_config, run_tag, train_command
    r = Run(FP, 1, 'tiny', 2, 30, res_dir=tmp_path)
    assert (r.tag, r.n_epochs) == (run_tag('tiny', 2, 30), 2) == ('tiny_e2_n30', 2)
    assert r.result_path == result_path(FP, 1, r.tag, tmp_path) == tmp_path/'synthetic/tiny_e2_n30/fp/seed1.json'
    assert r.config == run_config(FP, 'tiny', 2, 30) and r.train_command == train_command(FP, 1, 'tiny', 2, 30)
    with pytest.raises(ValueError, match='seed must be an int >= 0, got True'): Run(FP, True)
    with pytest.raises(ValueError, match=re.escape(f"preset must be one of {list(PRESETS)}, got 'big'")): Run(FP, 0, 'big')
    with pytest.raises(ValueError, match='seed must be an int >= 0, got False'): run_experiment(FP, False, **kw(tmp_path))
    p = tmp_path/'synthetic/tiny/fp/seed0.json'
    p.parent.mkdir(parents=True)
    p.write_text('')
    with pytest.raises(ValueError, match='seed0.json is not a result JSON'): load_results(tmp_path)


def test_kd_run_distills_from_the_fp_run_of_its_seed(done):
    "A `_kd` run uses the fp run of its seed and budget as teacher (here the module's finished one), records it, and trains differently."
    tmp, fp = done
    kd_e, plain_e = (replace(get_experiment(n), dataset='synthetic') for n in ('w2_kd', 'w2'))
    kd, plain = (run_experiment(e, 0, **kw(tmp)) for e in (kd_e, plain_e))
    assert kd['config']['learner']['distill'] == dict(T=2.0, alpha=0.5, teacher='fp')
    assert 'distill' not in plain['config']['learner'] and 'distill' not in fp['config']['learner']
    assert [h['train_loss'] for h in kd['history']] != [h['train_loss'] for h in plain['history']]
    assert (tmp/'ckpt').exists() and fp['seed'] == kd['seed'] == 0
