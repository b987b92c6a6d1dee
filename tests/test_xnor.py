"""Property tests for tq_nb.xnor: packing keeps every bit, the naive and the tiled XNOR-popcount products equal the
integer product `x @ w.T` on any shape (K not a multiple of 64, M or N of 1 included), the one-pass input packer
agrees with the reference packer on any floats, and XnorLinear gives the same floats as chapter 08's IntLinear,
with numba and without it (the fallback)."""
import copy, warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import tq_nb.xnor as xnor
from tq_nb.binarize import BinaryLinear, binarize_
from tq_nb.deploy import IntLinear, convert_
from tq_nb.transformer import QWeight, build_model
from tq_nb.xnor import XnorLinear, pack_rows, pack_signs, unpack_rows, xnor_mm, xnor_mm_naive

SETTINGS = settings(max_examples=40, deadline=None)
shapes = st.tuples(st.integers(1, 40), st.integers(1, 300), st.integers(1, 70))


def operands(M, K, N, post_relu, seed):
    "Random ±1 (or {0,1}) inputs, ±1 weights, their packed rows and their exact integer product."
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (M, K), generator=g)
    if not post_relu: x = x * 2 - 1
    w = torch.randint(0, 2, (N, K), generator=g) * 2 - 1
    return pack_rows(x, post_relu)[0].numpy(), pack_rows(w)[0].numpy(), (x @ w.T).int().numpy()


@SETTINGS
@given(shapes, st.booleans(), st.sampled_from([1, 2]), st.integers(0, 2**16))
def test_tiled_kernel_is_exact(shape, post_relu, threads, seed):
    M, K, N = shape
    a, b, ref = operands(M, K, N, post_relu, seed)
    np.testing.assert_array_equal(xnor_mm(a, b, K, post_relu, threads=threads), ref)


@SETTINGS
@given(shapes, st.booleans(), st.integers(0, 2**16))
def test_naive_kernel_is_exact(shape, post_relu, seed):
    M, K, N = shape
    a, b, ref = operands(M, K, N, post_relu, seed)
    np.testing.assert_array_equal(xnor_mm_naive(a, b, K, post_relu), ref)


@pytest.mark.parametrize('M,K,N', [(1, 1, 1), (1, 64, 1), (4, 63, 32), (5, 65, 33), (1, 512, 512), (64, 512, 512), (130, 1024, 97)])
def test_edge_and_paper_shapes(M, K, N):
    for post_relu in (False, True):
        a, b, ref = operands(M, K, N, post_relu, M + K + N)
        np.testing.assert_array_equal(xnor_mm(a, b, K, post_relu), ref)


def test_extreme_products():
    "All agreements (+K) and all disagreements (−K) on every output, and an all-zero input after a ReLU."
    K = 200
    ones, minus = torch.ones(6, K), -torch.ones(5, K)
    pw = pack_rows(ones)[0].numpy()
    np.testing.assert_array_equal(xnor_mm(pack_rows(ones)[0].numpy(), pw, K), np.full((6, 6), K))
    np.testing.assert_array_equal(xnor_mm(pack_rows(minus)[0].numpy(), pw, K), np.full((5, 6), -K))
    zero = pack_rows(torch.zeros(3, K), post_relu=True)[0].numpy()
    np.testing.assert_array_equal(xnor_mm(zero, pw, K, post_relu=True), np.zeros((3, 6)))


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 200), st.booleans(), st.integers(0, 2**16))
def test_pack_roundtrip_and_layout(rows, K, post_relu, seed):
    t = torch.randn(rows, K, generator=torch.Generator().manual_seed(seed))
    words, k = pack_rows(t, post_relu)
    assert k == K and words.shape == (rows, -(-K // 64)) and words.dtype == torch.uint64
    codes = (t > 0) if post_relu else (t >= 0)
    assert torch.equal(unpack_rows(words, K), codes.to(torch.uint8))
    bit = lambda r, k: (int(words[r, k // 64].view(torch.int64)) >> (k % 64)) & 1   # element k in bit k % 64 of word k // 64
    assert [bit(0, k) for k in range(K)] == codes[0].int().tolist()
    if K % 64: assert int(words[:, -1].view(torch.int64).bitwise_right_shift(K % 64).abs().sum()) == 0   # padding bits are 0


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)

@SETTINGS
@given(st.integers(1, 4), st.integers(1, 150), st.booleans(), st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
       st.lists(floats, min_size=1, max_size=8), st.integers(0, 2**16))
def test_one_pass_packer_matches_reference(rows, K, post_relu, dtype, specials, seed):
    "Including 0, -0, NaN, ±inf and subnormals planted at random places."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, K, generator=g)
    idx = torch.randint(0, rows * K, (len(specials),), generator=g)
    x.view(-1)[idx] = torch.tensor(specials)
    x = x.to(dtype)
    np.testing.assert_array_equal(pack_signs(x, post_relu), pack_rows(x, post_relu)[0].numpy())


def layer_pair(K, N, post_relu, bias, method, seed):
    torch.manual_seed(seed)
    m = BinaryLinear(K, N, bias=bias, method=method, binarize_act=True, post_relu=post_relu).eval()
    with torch.no_grad():
        if bias: m.bias.normal_()
    return m, IntLinear.from_qweight(m.qweight(), m.bias, 'step' if post_relu else 'sign')


@SETTINGS
@given(st.integers(1, 200), st.integers(1, 70), st.booleans(), st.booleans(), st.sampled_from(['basic', 'scaled', 'irnet']),
       st.integers(1, 9), st.integers(0, 2**16))
def test_xnor_linear_equals_int_linear(K, N, post_relu, bias, method, M, seed):
    m, il = layer_pair(K, N, post_relu, bias, method, seed)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed))
    x[0, 0] = 0.0
    with torch.no_grad():
        y = XnorLinear.from_binary_linear(m)(x)
        assert torch.equal(y, il(x))
        assert torch.equal(XnorLinear.from_int_linear(il)(x), y)


def test_fallback_without_numba_gives_the_same_outputs(monkeypatch):
    m, il = layer_pair(130, 40, False, True, 'scaled', 0)
    xl, x = XnorLinear.from_binary_linear(m), torch.randn(3, 4, 130)
    with torch.no_grad():
        y = xl(x)
        monkeypatch.setattr(xnor, 'HAVE_NUMBA', False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            assert torch.equal(xl(x), y)
    assert [('numba is not installed' in str(c.message)) for c in caught] == [True]
    assert torch.equal(y, il(x))


def test_whole_model_same_logits_as_int8_path():
    "A W1A1 tiny encoder: chapter 08's integer model and the same model with every IntLinear swapped for an XnorLinear."
    torch.manual_seed(0)
    fake = build_model('tiny', n_classes=5, vocab_size=100, seed=0).eval()
    binarize_(fake, 'all|~cls.final', method='scaled', binarize_act=True)
    ints = convert_(copy.deepcopy(fake))
    names = [n for n, m in ints.named_modules() if isinstance(m, IntLinear) and m.act in ('sign', 'step')]
    assert len(names) > 0 and any(m.act == 'step' for m in ints.modules() if isinstance(m, IntLinear))
    xn = copy.deepcopy(ints)
    for name in names:
        parent, attr = name.rsplit('.', 1)
        setattr(xn.get_submodule(parent), attr, XnorLinear.from_int_linear(xn.get_submodule(name)))
    assert sum(isinstance(m, XnorLinear) for m in xn.modules()) == len(names)
    ids = torch.randint(5, 100, (4, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 16, dtype=torch.bool)
    with torch.no_grad(): assert torch.equal(xn(ids, mask), ints(ids, mask))


def test_state_dict_roundtrip_and_qweight():
    m, _ = layer_pair(100, 12, True, True, 'scaled', 3)
    xl, fresh = XnorLinear.from_binary_linear(m), XnorLinear(100, 12, post_relu=True)
    x = torch.randn(5, 100)
    fresh(x)                                       # builds its kernel copy of the zero weight first
    fresh.load_state_dict(xl.state_dict())
    assert torch.equal(fresh(x), xl(x))
    qw = xl.qweight()
    assert torch.equal(qw.codes, m.qweight().codes) and torch.allclose(qw.dequantize(), m.qweight().dequantize())


def test_bad_arguments():
    with pytest.raises(ValueError, match='in_features must be an int'): XnorLinear(0, 2)
    with pytest.raises(ValueError, match='post_relu must be a bool'): XnorLinear(2, 2, post_relu='yes')
    with pytest.raises(ValueError, match='m must binarize its input'): XnorLinear.from_binary_linear(BinaryLinear(4, 4))
    with pytest.raises(ValueError, match="act 'sign' or 'step'"): XnorLinear.from_int_linear(IntLinear(4, 4, bits=2, act='sign'))
    with pytest.raises(ValueError, match='qw must be a 1-bit weight'):
        XnorLinear.from_qweight(QWeight(torch.zeros(2, 2, dtype=torch.uint8), 2, torch.tensor(1.), torch.tensor(1.5)))
    with pytest.raises(ValueError, match='same number of words'): xnor_mm(np.zeros((1, 1), np.uint64), np.zeros((1, 2), np.uint64), 3)
    with pytest.raises(ValueError, match='threads must be'): xnor_mm(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 3, threads=0)
    with pytest.raises(ValueError, match='x must be a 2-d float tensor'): pack_signs(torch.ones(3, 3, dtype=torch.int8))


def test_convert_binary_xnor_and_checkpoint(tmp_path):
    "convert_(binary='xnor'): XnorLinear layers, the int8 path's logits, and a checkpoint that stores the words and reloads."
    from tq_nb.deploy import int_summary, load_int, save_int
    fake = build_model('tiny', n_classes=5, vocab_size=100, seed=0).eval()
    binarize_(fake, 'all|~cls.final', method='irnet', binarize_act=True)
    ints, xn = convert_(copy.deepcopy(fake)), convert_(copy.deepcopy(fake), binary='xnor')
    assert not any(isinstance(m, XnorLinear) for m in ints.modules())
    assert set(int_summary(xn).compute) == {'XNOR-popcount', 'float'}
    ids = torch.randint(5, 100, (3, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 12:] = False
    loaded = load_int(save_int(xn, tmp_path/'xnor.safetensors'))
    assert loaded.layers[0].mha.q.words.dtype == torch.uint64
    with torch.no_grad():
        ref = ints(ids, mask)
        assert torch.equal(xn(ids, mask), ref) and torch.equal(loaded(ids, mask), ref)
