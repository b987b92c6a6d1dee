"""Property tests for tq_nb.binarize: the binary weight is exactly what qweight() describes, two values per
channel, the switch restores the latent layer bit for bit, Libra-PB standardizes, surrogate gradients match
their formulas, degenerate weights stay finite, the t/k schedule, and surgery by pattern."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st
from torch import nn

from tq_nb.binarize import (EDE_METHODS, METHODS, PATTERNS, BinaryLinear, IRNetSign, SignEDE, SignSTE, binarize_, ede_grad,
                            ir_net_t, libra_pb, set_ir_net_epoch_, sign)
from tq_nb.transformer import build_model, select_linears, set_quant_, strip_quant_

SETTINGS = dict(max_examples=60, deadline=None)


@st.composite
def weights(draw, degenerate=True):
    "A weight matrix [out, in]: random normal rows at a drawn scale, some rows (optionally) zero or constant."
    out_f, in_f = draw(st.integers(1, 12)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 0.05, 1.0, 30.0]))
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)) * scale
    if degenerate:
        kinds = draw(st.lists(st.sampled_from(['normal', 'zero', 'const']), min_size=out_f, max_size=out_f))
        for i, kind in enumerate(kinds):
            if kind == 'zero': w[i] = 0
            if kind == 'const': w[i] = draw(st.sampled_from([0.25, -0.5, 0.1, 3.0]))
    return w


def binary_layer(w, method, bias=True, **kw):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad(): lin.weight.copy_(w)
    return lin, BinaryLinear.from_linear(lin, method, **kw)


@settings(**SETTINGS)
@given(weights(), st.sampled_from(METHODS))
def test_qweight_is_the_forward_weight_bit_for_bit(w, method):
    lin, bl = binary_layer(w, method)
    bl.eval()
    with torch.no_grad():
        wb = bl.binary_weight()
        q = bl.qweight()
        assert q.bits == 1 and q.codes.dtype == torch.uint8 and q.scale.shape == (w.shape[0], 1)
        assert set(q.codes.unique().tolist()) <= {0, 1}
        deq = q.dequantize()
        assert torch.equal(deq, wb)
        assert torch.equal(deq.signbit(), wb.signbit())  # even the sign of zero agrees
        x = torch.randn(3, w.shape[1])
        assert torch.equal(bl(x), F.linear(x, deq, bl.bias))
        assert torch.equal(bl.to_linear(bake=True)(x), bl(x))
        assert torch.isfinite(wb).all()


@settings(**SETTINGS)
@given(weights(), st.sampled_from(METHODS))
def test_each_channel_holds_plus_or_minus_alpha(w, method):
    _, bl = binary_layer(w, method)
    with torch.no_grad():
        wb, alpha = bl.binary_weight(), bl.qweight().scale / 2
        assert (alpha >= 0).all()
        assert ((wb == alpha) | (wb == -alpha)).all()
        assert all(len(row.unique()) <= 2 for row in wb)
        if method == 'basic': assert (alpha == 1).all()
        if method == 'scaled': assert torch.allclose(alpha, w.abs().mean(1, keepdim=True))
        if method == 'irnet':  # a power of two, or 0 for a channel with no spread
            pos = alpha[alpha > 0]
            assert torch.equal(pos.log2(), pos.log2().round())
        if method == 'irnet_scaled':  # IR-Net's power of two times the channel's std
            _, s, std = libra_pb(w)
            assert torch.equal(alpha, s * std)


@settings(**SETTINGS)
@given(weights(degenerate=False), st.sampled_from(METHODS))
def test_spread_channels_take_exactly_two_values(w, method):
    assume(w.shape[1] >= 2)
    _, bl = binary_layer(w, method)
    with torch.no_grad():
        wb = bl.binary_weight()
        codes = bl.qweight().codes
    for row, c in zip(wb, codes):
        if c.min() == 0 and c.max() == 1: assert len(row.unique()) == 2


@settings(**SETTINGS)
@given(weights(), st.sampled_from(METHODS), st.booleans(), st.booleans())
def test_switch_off_restores_the_latent_layer_bit_for_bit(w, method, act, bias):
    lin, bl = binary_layer(w, method, bias=bias, binarize_act=act)
    x = torch.randn(4, w.shape[1])
    with torch.no_grad():
        bl(x)  # a forward with binarization on leaves the latent weight alone
        assert torch.equal(bl.weight, lin.weight)
        set_quant_(bl, False)
        assert torch.equal(bl(x), lin(x))
        assert torch.equal(bl.to_linear(bake=False)(x), lin(x))


@settings(**SETTINGS)
@given(weights(degenerate=False))
def test_libra_pb_standardizes_each_channel(w):
    assume(w.shape[1] >= 2)
    std0 = w.std(1, correction=0)
    assume(bool((std0 > 1e-6 * w.abs().amax(1).clamp_min(1e-30)).all()) and bool((std0 > 1e-7).all()))
    wh, s, std = libra_pb(w.double())
    assert torch.allclose(wh.mean(1), torch.zeros(w.shape[0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(wh.std(1, correction=0), torch.ones(w.shape[0], dtype=torch.float64), atol=1e-9)
    assert torch.equal(s.log2(), s.log2().round())


@settings(**SETTINGS)
@given(weights(), st.sampled_from(METHODS), st.booleans())
def test_degenerate_weights_stay_finite_forward_and_backward(w, method, act):
    _, bl = binary_layer(w, method, binarize_act=act)
    x = torch.randn(5, w.shape[1], requires_grad=True)
    bl(x).square().sum().backward()
    assert torch.isfinite(bl.weight.grad).all() and torch.isfinite(x.grad).all()


@settings(**SETTINGS)
@given(st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=50))
def test_ste_gradient_is_the_clipped_identity(vals):
    x = torch.tensor(vals, requires_grad=True)
    g = torch.randn(len(vals))
    y = SignSTE.apply(x)
    y.backward(g)
    assert torch.equal(y.detach(), torch.where(x.detach() >= 0, 1.0, -1.0))
    assert torch.equal(x.grad, g * (x.detach().abs() <= 1))


@settings(**SETTINGS)
@given(st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=50), st.integers(0, 10), st.integers(1, 10))
def test_ede_gradient_matches_its_formula_and_tanh_autograd(vals, epoch, epochs):
    assume(epoch <= epochs)
    t, k = ir_net_t(epoch, epochs)
    x = torch.tensor(vals, requires_grad=True)
    g = torch.randn(len(vals))
    SignEDE.apply(x, t, k).backward(g)
    x2 = x.detach().double().requires_grad_()
    (k * torch.tanh(t * x2)).backward(g.double())
    assert torch.allclose(x.grad.double(), x2.grad, atol=1e-6 * k * t * float(g.abs().max()) + 1e-12)
    assert torch.allclose(x.grad.double(), g.double() * ede_grad(x.detach().double(), t, k), atol=1e-6 * k * t * float(g.abs().max()) + 1e-12)


@settings(**SETTINGS)
@given(weights(degenerate=False), st.floats(0.1, 10.0))
def test_irnet_fused_backward_matches_autograd(w, t):
    k = max(1 / t, 1.0)
    std0 = w.std(1, correction=0)
    assume(bool((std0 > 1e-6).all()) and w.shape[1] >= 2)
    w = w.double().requires_grad_()
    up = torch.randn(w.shape, dtype=torch.float64)
    g1, = torch.autograd.grad(IRNetSign.apply(w, t, k), w, up)
    wh, s, _ = libra_pb(w)
    g2, = torch.autograd.grad(SignEDE.apply(wh, t, k) * s.detach(), w, up)
    # Both sides sum terms as large as |up|·k·t·s/std that cancel (exactly, for a 2-wide row, whose
    # standardization is always ±1), so rounding error scales with that term size, not with the result.
    term = float(up.abs().max()) * k * t * float(s.detach().max()) / float(std0.min())
    assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-12 * term * w.shape[1])


@settings(**SETTINGS)
@given(st.integers(1, 50), st.data())
def test_t_k_schedule(epochs, data):
    t0, k0 = ir_net_t(0, epochs)
    tN, kN = ir_net_t(epochs, epochs)
    assert math.isclose(t0, 0.1) and math.isclose(k0, 10.0)
    assert math.isclose(tN, 10.0) and math.isclose(kN, 1.0)
    if epochs % 2 == 0: assert math.isclose(ir_net_t(epochs // 2, epochs)[0], 1.0)
    e = data.draw(st.integers(0, epochs))
    t, k = ir_net_t(e, epochs)
    assert math.isclose(k, max(1 / t, 1.0))
    if e < epochs: assert ir_net_t(e + 1, epochs)[0] > t
    bad = data.draw(st.one_of(st.integers(-100, -1), st.integers(epochs + 1, epochs + 100)))
    with pytest.raises(ValueError, match='epoch must be a number in'): ir_net_t(bad, epochs)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(sorted(PATTERNS)), st.sampled_from(METHODS), st.booleans())
def test_binarize_by_pattern_keeps_weights_and_replaces_exactly_the_selection(pattern, method, act):
    model = build_model('tiny', n_classes=4, vocab_size=50, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = list(select_linears(model, PATTERNS[pattern]))
    names = binarize_(model, pattern, method, binarize_act=act)
    assert names == expected
    assert all(isinstance(m, BinaryLinear) == (n in names) for n, m in select_linears(model).items())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    ids = torch.randint(4, 50, (2, 9))
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(ids)).all()
        n_ir = set_ir_net_epoch_(model, 1, 2)
        assert n_ir == (len(names) if method in EDE_METHODS else 0)
        set_quant_(model, False)
        assert torch.equal(model(ids), build_model('tiny', n_classes=4, vocab_size=50, seed=0).eval()(ids))
        set_quant_(model, True)
        if not act:
            out = model(ids)
            assert torch.equal(strip_quant_(model)(ids), out)


def test_bad_arguments_fail_clearly():
    model = build_model('tiny', n_classes=4, vocab_size=50, seed=0)
    with pytest.raises(ValueError, match="method must be one of"): binarize_(model, 'ALL', 'xnor')
    with pytest.raises(ValueError, match="unknown pattern 'ALL_QKV'"): binarize_(model, 'ALL_QKV')
    with pytest.raises(ValueError, match="unknown term"): binarize_(model, 'attention')
    with pytest.raises(ValueError, match="epochs must be a positive int"): ir_net_t(0, 0)
    with pytest.raises(ValueError, match="epoch must be a number in 0..3"): set_ir_net_epoch_(model, 4, 3)
