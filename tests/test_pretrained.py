"""Tests for post-training quantization of a pretrained encoder (tq_nb.pretrained, chapter 14), on a tiny random
BERT and a word-hashing tokenizer: mean-pooled embeddings ignore padding and keep the input order, the probe
refitted at the chosen C is the probe that was scored, every configuration builds the layers it names, size
accounting matches the packed checkpoint, and the command writes, skips and redoes results."""
import copy, json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip('transformers', reason="needs Hugging Face transformers: pip install -e '.[pretrained]'")

from tq_nb import pretrained as P
from tq_nb.binarize import BinaryLinear
from tq_nb.data import synthetic_text
from tq_nb.fully_quantize import FullQuantLinear
from tq_nb.hf import tiny_bert
from tq_nb.memory import checkpoint_sizes, save_packed
from tq_nb.quantize import QuantLinear

TOK = P.ToyTokenizer()
TEXTS = ['the cat sat on the mat', 'a dog', 'an animal that barks and bites', 'x', 'a b c d e f g h']


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_embed_is_masked_mean_in_input_order():
    bert = tiny_bert()
    raw = P.embed(bert, TOK, TEXTS, batch_size=2, normalize=False)
    for i, t in enumerate(TEXTS):
        with torch.no_grad(): h = bert(**TOK([t])).last_hidden_state[0]
        torch.testing.assert_close(raw[i], h.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(P.embed(bert, TOK, TEXTS).norm(dim=1), torch.ones(len(TEXTS)))
    with pytest.raises(ValueError, match='eval mode'): P.embed(copy.deepcopy(bert).train(), TOK, TEXTS)
    with pytest.raises(ValueError, match='must not be empty'): P.embed(bert, TOK, [])


def test_cosine_to_reference():
    e = torch.randn(6, 5)
    assert P.cosine_to_reference(e, e) == pytest.approx(1.)
    assert P.cosine_to_reference(e, -e) == pytest.approx(-1.)
    assert P.cosine_to_reference(e, 3 * e) == pytest.approx(1.)
    with pytest.raises(ValueError, match='same shape'): P.cosine_to_reference(e, e.T)


def test_fit_probe_is_the_scored_probe():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400); X = rng.normal(size=(400, 6)) + 1.5 * np.eye(6)[y]
    r = P.probe_accuracy(X[:250], y[:250], X[250:320], y[250:320], X[320:], y[320:], Cs=(0.01, 1.))
    assert r['C'] in (0.01, 1.) and len(r['grid']) == 2
    assert P.fit_probe(X[:250], y[:250], r['C']).score(X[320:], y[320:]) == r['test_acc']


@pytest.mark.parametrize('name,cls', [('fp32', nn.Linear), ('w3', QuantLinear), ('w8a8', FullQuantLinear), ('bin_scaled', BinaryLinear)])
def test_ptq_variant_layers(name, cls):
    m = P.ptq_variant(name, tiny_bert(), P.calibration_batches(TOK, TEXTS, 2, 2))
    assert not m.training
    assert {type(m.encoder.layer[i].attention.self.query) for i in (0, 1)} | {type(m.pooler.dense)} == {cls}
    assert type(m.embeddings.word_embeddings) is nn.Embedding


def test_ptq_variant_bits_order_and_errors():
    ref = P.embed(tiny_bert(), TOK, TEXTS)
    cos = {n: P.cosine_to_reference(P.embed(P.ptq_variant(n, tiny_bert()), TOK, TEXTS), ref) for n in ('w2', 'w4', 'w8', 'bin', 'bin_scaled')}
    assert cos['w2'] < cos['w4'] < cos['w8'] and cos['w8'] > 0.999
    assert cos['bin'] < cos['bin_scaled']
    with pytest.raises(ValueError, match='calib must be'): P.ptq_variant('w8a8', tiny_bert())
    with pytest.raises(ValueError, match='name must be one of'): P.ptq_variant('w16', tiny_bert())


def test_model_file_bytes_matches_packed_checkpoint(tmp_path):
    for name in ('fp32', 'w4', 'irnet'):
        m = P.ptq_variant(name, tiny_bert())
        assert P.model_file_bytes(m) == checkpoint_sizes(save_packed(m, tmp_path/f'{name}.safetensors'))['data']
    emb = 4 * sum(p.numel() for p in tiny_bert().embeddings.parameters())
    m = P.ptq_variant('w2', tiny_bert())
    assert P.model_file_bytes(m, without_embeddings=True) == P.model_file_bytes(m) - emb


def test_cpu_latency_restores_threads():
    torch.set_num_threads(2)
    lat = P.cpu_latency(tiny_bert(), TOK(TEXTS), repeats=2)
    assert torch.get_num_threads() == 2 and lat['threads'] == 1 and lat['batch'] == len(TEXTS) and len(lat['times']) == 2
    with pytest.raises(ValueError, match='repeats'): P.cpu_latency(tiny_bert(), TOK(TEXTS), repeats=0)


def test_run_pretrained_writes_skips_and_redoes(tmp_path):
    kw = dict(n_train=100, n_valid=20, n_test=20, res_dir=tmp_path/'res', make_model=tiny_bert, tok=TOK,
              splits=synthetic_text(n=200, seed=0), cache_dir=tmp_path/'cache', tag='tiny', batch_size=16, n_calib=2, repeats=1)
    res = P.run_pretrained(['fp32', 'w4'], **kw)
    on_disk = json.loads((tmp_path/'res'/'w4.json').read_text())
    assert on_disk['cosine_test'] == res['w4']['cosine_test'] and on_disk['sizes']['n_test'] == 20 and on_disk['w_bits'] == 4
    assert 'command' in on_disk and 'torch' in on_disk['versions']
    assert res['fp32']['cosine_test'] == pytest.approx(1.) and res['fp32']['probe_fp32_acc'] == res['fp32']['probe_retrained_acc']
    assert res['w4']['fp32_probe'] == res['fp32']['fp32_probe']
    assert len(list((tmp_path/'cache').glob('tiny_fp32_*.pt'))) == 3
    assert P.run_pretrained(['w4'], **kw)['w4']['finished'] == on_disk['finished']
    assert P.run_pretrained(['w4'], **kw, redo=True)['w4']['wall_time'] != on_disk['wall_time']
    assert list(P.load_pretrained(tmp_path/'res').index) == ['fp32', 'w4']


def _kw(tmp_path):
    return dict(n_train=100, n_valid=20, n_test=20, res_dir=tmp_path/'res', make_model=tiny_bert, tok=TOK,
                splits=synthetic_text(n=250, seed=0), cache_dir=tmp_path/'cache', tag='tiny')


def test_int_backends_are_integer_and_close():
    from tq_nb.deploy import IntLinear
    calib = P.calibration_batches(TOK, TEXTS, 2, 2)
    for name in P.INT_BACKENDS:
        width = 128 if '_g' in name else 32      # groups of 64 and 128 need a wider model
        ref = P.embed(tiny_bert(width=width), TOK, TEXTS)
        m = P.int_backend(name, tiny_bert(width=width), calib)
        if name.startswith('tq_'): assert isinstance(m.encoder.layer[1].output.dense, IntLinear)
        assert P.cosine_to_reference(P.embed(m, TOK, TEXTS), ref) > 0.99, name
    with pytest.raises(ValueError, match='calib must be'): P.int_backend('tq_w8a8_static', tiny_bert())


def test_paired_timings_rotate_and_ratio():
    calls = []
    t = P.paired_timings({k: (lambda k=k: calls.append(k)) for k in 'ab'}, repeats=2, warmup=0, threads=1)
    assert calls == ['a', 'b', 'b', 'a'] and [len(v) for v in t.values()] == [2, 2]
    r = P.paired_ratio({'x': [3., 1.], 'y': [1., 2.]}, 'x', 'y')
    assert r['den_faster_rounds'] == 1 and r['rounds'] == 2 and r['median'] == pytest.approx(1.75)


def test_run_int_inference_writes_one_file(tmp_path):
    r = P.run_int_inference(['tq_int8'], **_kw(tmp_path), batch_size=8, n_calib=1, rounds=2, rounds_single=2)
    assert list(r['backends']) == ['fp32', 'tq_int8'] and r['backends']['fp32']['probe_agreement'] == 1.
    assert json.loads((tmp_path/'res'/'int_inference.json').read_text())['timing']['batch']['sequences'] == 8
    assert set(r['timing']['single']['paired']) == {'fp32 / tq_int8', 'tq_int8 / fp32'}


def test_run_int_inference_out_and_no_timing(tmp_path):
    "A second integer run goes to its own file, leaves the first untouched, and times only the regimes asked for."
    first = P.run_int_inference(['tq_int8'], **_kw(tmp_path), batch_size=8, n_calib=1, rounds=1, rounds_single=1)
    r = P.run_int_inference(['tq_int8'], **_kw(tmp_path), batch_size=8, n_calib=1, rounds=0, rounds_single=0, out='other.json')
    assert r['timing'] == {} and set(r['cpu']) == {'name', 'int8_dot'} and set(r['cpu']['int8_dot']) <= set(P.INT8_DOT_FLAGS)
    kept = json.loads((tmp_path/'res'/'int_inference.json').read_text())
    assert set(kept['timing']) == {'batch', 'single'} and kept['timing']['batch']['times_ms'] == first['timing']['batch']['times_ms']
    assert json.loads((tmp_path/'res'/'other.json').read_text())['backends'].keys() == r['backends'].keys()
    for bad in ('sub/x.json', 'x.txt', 3):
        with pytest.raises(ValueError, match='out must be a file name ending in .json'): P.run_int_inference(['tq_int8'], **_kw(tmp_path), out=bad)


def test_part_variant_and_sensitivity(tmp_path):
    m = P.part_variant('ffn.w1', 4, tiny_bert())
    assert type(m.encoder.layer[0].intermediate.dense) is QuantLinear and type(m.encoder.layer[0].output.dense) is nn.Linear
    assert P.part_variant('mha.v', 1, tiny_bert()).encoder.layer[1].attention.self.value.method == 'scaled'
    tab = P.run_sensitivity(('ffn.w1', 'layers.0'), (2,), **_kw(tmp_path))
    assert list(tab.n_linears) == [2, 6] and (tmp_path/'res'/'sensitivity.csv').exists()
    assert sorted(p.name for p in (tmp_path/'res'/'sensitivity').iterdir()) == ['ffn.w1_2bit.json', 'layers.0_2bit.json']


def test_distill_improves_student_and_freezes_embeddings():
    texts = synthetic_text(n=100, seed=0).train.texts[:48]
    teacher = P.embed(tiny_bert(), TOK, texts)
    student = P.ptq_variant('w2', tiny_bert())
    before = P.cosine_to_reference(P.embed(student, TOK, texts), teacher)
    hist = P.distill_(student, TOK, texts, teacher, epochs=2, batch_size=16, lr=1e-3, loss='mse')
    assert len(hist) == 6 and P.cosine_to_reference(P.embed(student, TOK, texts), teacher) > before
    torch.testing.assert_close(student.embeddings.word_embeddings.weight, tiny_bert().embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match='one row per text'): P.distill_(student, TOK, texts[:3], teacher)


def test_run_qat_reports_recovery(tmp_path):
    kw = _kw(tmp_path)
    P.run_pretrained(['w2'], **kw, batch_size=16, repeats=1)
    q = P.run_qat(['w2'], n_distill=32, **kw, batch_size=16)['w2']
    assert q['distill']['first_gloss'] == 100 and q['distill']['steps'] == 2 and set(q['recovered']) == set(P.QAT_METRICS)
    assert json.loads((tmp_path/'res'/'qat_w2.json').read_text())['base'] == 'w2'
    assert list(P.load_pretrained(tmp_path/'res').index) == ['w2']
    assert P.recovered(dict(cosine_test=0., probe_fp32_acc=.2, probe_retrained_acc=.5), dict(cosine_test=.5, probe_fp32_acc=.2, probe_retrained_acc=.6),
                       dict(cosine_test=1., probe_fp32_acc=.6, probe_retrained_acc=.6)) == dict(cosine_test=.5, probe_fp32_acc=0., probe_retrained_acc=pytest.approx(1.))


def test_per_group_variants():
    assert [n for n in P.PTQ_VARIANTS if '_g' in n] == ['w8_g128', 'w8_g64', 'w4_g128', 'w4_g64', 'w3_g128', 'w3_g64']
    with pytest.raises(ValueError, match='group_size must divide in_features=32'): P.ptq_variant('w4_g64', tiny_bert())
    t = P.require_transformers()
    torch.manual_seed(0)
    wide = t.BertModel(t.BertConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256, vocab_size=100)).eval()
    m = P.ptq_variant('w4_g64', copy.deepcopy(wide))
    lins = P.select_linears(m)
    assert {type(l) for l in lins.values()} == {QuantLinear} and {l.group_size for l in lins.values()} == {64}
    assert m.encoder.layer[0].output.dense.qweight().scale.shape == (128, 4)
    ref = P.embed(wide, TOK, TEXTS)
    cos = {n: P.cosine_to_reference(P.embed(P.ptq_variant(n, copy.deepcopy(wide)), TOK, TEXTS), ref) for n in ('w3', 'w3_g64')}
    assert cos['w3_g64'] >= cos['w3'] - 1e-4, cos
