"""Property tests for tq_nb.deploy: the integer GEMM is exact, integer weights stand for exactly the quantized
values, per-token quantization stays within half a step, an IntLinear stays within the derived bound of the
float layer, and a saved checkpoint reloads to the same outputs — or, damaged or for another model, fails with a
CheckpointError and leaves the model as it was."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from tq_nb.deploy import (IntLinear, NotConvertible, convert_, int8_weight, int_mm, load_int, quantize_per_token,
                          quantize_static, requantize_int8, save_int, to_int)
from tq_nb.checkpoint import CheckpointError
from tq_nb.transformer import InputQuantizer, QuantizedLinear, QWeight, build_model, replace_linears_
from tq_nb.quantize import fake_quant, qrange

import test_memory  # its damaged-file helpers; imported here, not inside a @given test (hypothesis refuses nested @given)

SETTINGS = settings(max_examples=30, deadline=None)


def codes_qweight(n, k, bits, zero, seed):
    "A QWeight with random codes, per-channel scales and the given zero point."
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.uint8)
    return QWeight(codes, bits, torch.rand(n, 1, generator=g) + 0.01, torch.tensor(float(zero)))


class StandIn(QuantizedLinear):
    "A minimal quantized layer following the contract: symmetric per-channel codes, zero point half-way."
    bits = 4
    def qweight(self):
        zero = (2**self.bits - 1) / 2
        scale = self.weight.detach().abs().amax(1, keepdim=True) / zero
        codes = (self.weight.detach() / scale + zero).round().clamp(0, 2**self.bits - 1).to(torch.uint8)
        return QWeight(codes, self.bits, scale, torch.tensor(zero))
    def forward(self, x):
        return F.linear(x, self.qweight().dequantize() if self.quant_enabled else self.weight, self.bias)
    def to_linear(self, bake=True):
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.load_state_dict({k: v for k, v in self.state_dict().items() if k in ('weight', 'bias')})
        if bake: lin.weight.data = self.qweight().dequantize()
        return lin


def stand_in_model(bits, seed=0):
    m = build_model('tiny', n_classes=4, vocab_size=50, seed=seed).eval()
    def make(name, lin):
        s = StandIn(lin.in_features, lin.out_features)
        s.load_state_dict(lin.state_dict()); s.bits = bits
        return s
    replace_linears_(m, 'all|~cls.final', make)
    return m


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_int_mm_exact(M, K, N, pad, transposed, seed):
    "Exact for every shape, and for the transposed weight view IntLinear passes (K = 1 is a torch bug we work around)."
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (N, K) if transposed else (K, N), generator=g, dtype=torch.int8)
    b = b.t() if transposed else b
    assert torch.equal(int_mm(a, b, pad=pad), a.int() @ b.int())


@SETTINGS
@given(st.integers(1, 8), st.sampled_from(['half', 'int']), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_int8_weight_exact(bits, kind, n, k, seed):
    zero = (2**bits - 1) / 2 if kind == 'half' else 2**(bits - 1)
    qw = codes_qweight(n, k, bits, zero, seed)
    r = int8_weight(qw)
    v = (1 if kind == 'int' else 2) * (qw.codes.double() - zero)  # a half-way zero point at 8 bits can need ±255
    fits = bool(((v >= -128) & (v <= 127)).all())
    assert (r is not None) == fits
    if r is not None:
        W, s = r
        assert W.dtype == torch.int8
        torch.testing.assert_close(W.float() * s[:, None], qw.dequantize(), rtol=1e-6, atol=0)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 255), st.integers(0, 2**31 - 1))
def test_requantize_within_half_step(n, k, zero, seed):
    qw = codes_qweight(n, k, 8, zero, seed)
    W, s = int8_weight(requantize_int8(qw))
    w = qw.dequantize()
    assert ((W.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6 * w.abs()).all()


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 50), st.floats(1e-3, 1e3), st.floats(-2, 2), st.integers(0, 2**31 - 1))
def test_per_token_half_step(M, K, mag, shift, seed):
    x = (torch.randn(M, K, generator=torch.Generator().manual_seed(seed)) + shift) * mag
    q, s, z = quantize_per_token(x)
    assert q.dtype == torch.int8 and (z == z.round()).all()
    assert ((s * (q.float() - z) - x).abs() <= s / 2 * (1 + 1e-4) + 1e-6 * x.abs()).all()


@SETTINGS
@given(st.integers(2, 8), st.booleans(), st.floats(0.01, 1.0), st.integers(0, 255), st.integers(0, 2**31 - 1))
def test_static_matches_fake_quant(bits, symmetric, scale, zero, seed):
    "The codes are exactly those of tq_nb.quantize's fake quantizer (same rounding, same clamp)."
    qmin, qmax = qrange(bits, symmetric)
    zero = float(qmin + zero % (qmax - qmin + 1))
    x = torch.randn(7, 9, generator=torch.Generator().manual_seed(seed)) * 2
    scale = torch.tensor(scale)
    q = quantize_static(x, scale, torch.tensor(zero), bits, qmin)
    fake = fake_quant(x, scale, zero, qmin, qmax)
    assert torch.equal((q.float() + 2**(bits - 1) - zero) * scale, fake)


@SETTINGS
@given(st.integers(1, 8), st.integers(1, 24), st.integers(1, 24), st.booleans(), st.integers(0, 2**31 - 1))
def test_int_linear_within_bound(bits, k, n, bias, seed):
    torch.manual_seed(seed)
    lin, x = nn.Linear(k, n, bias=bias), torch.randn(3, 5, k)
    s = StandIn(k, n, bias=bias); s.load_state_dict(lin.state_dict()); s.bits = bits
    qw = s.qweight()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        il = IntLinear.from_qweight(qw, s.bias)
    W, ws = int8_weight(il.qweight())
    w = W.float() * ws[:, None]                        # what the integer layer multiplies by (= qw unless requantized)
    _, sx, _ = quantize_per_token(x.reshape(-1, k))
    bound = sx / 2 * w.abs().sum(1) + 1e-4 * (1 + F.linear(x, w).reshape(-1, n).abs())
    assert ((il(x) - F.linear(x, w, s.bias)).reshape(-1, n).abs() <= bound).all()


@pytest.mark.parametrize('bits', [1, 2, 4, 8])
def test_model_convert_and_checkpoint(bits, tmp_path):
    m = stand_in_model(bits)
    ids = torch.randint(0, 50, (16, 20), generator=torch.Generator().manual_seed(bits))
    mask = torch.arange(20)[None] < torch.randint(5, 21, (16, 1), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        im = to_int(m)
    with torch.no_grad():
        ref, y = m(ids, mask), im(ids, mask)
        assert (ref - y).abs().max() < 0.05 * ref.abs().max()
        assert (ref.argmax(1) == y.argmax(1)).float().mean() >= 0.9
        fn = save_int(im, tmp_path/'m.safetensors')
        for lazy in (False, True):
            assert torch.equal(load_int(fn, lazy=lazy)(ids, mask), y)
    assert sum(isinstance(l, IntLinear) for l in im.modules()) == 13


def test_bad_input():
    plain = build_model('tiny', n_classes=4, vocab_size=50, seed=0)
    with pytest.raises(ValueError, match='model has no quantized layers'): convert_(plain)
    with pytest.warns(UserWarning, match='stays in float'): assert convert_(plain, allow_float=True) is plain
    m = stand_in_model(4)
    m.layers[0].ffn.w1.quant_enabled = False
    with pytest.raises(NotConvertible, match=r'layers\.0\.ffn\.w1: quantization is switched off'): to_int(m)
    with pytest.warns(UserWarning, match='stays a float Linear'): im = to_int(m, allow_float=True)
    assert type(im.layers[0].ffn.w1) is nn.Linear and isinstance(im.layers[0].ffn.w2, IntLinear)
    with pytest.raises(NotConvertible, match='needs trained input ranges'): to_int(stand_in_model(4), act='static')
    with pytest.raises(ValueError, match="act must be one of"): to_int(stand_in_model(4), act='per-tensor')
    with pytest.raises(ValueError, match='already converted'): convert_(to_int(stand_in_model(4)))


class InputQuant(InputQuantizer):
    "Stand-in for a trained input quantizer: scale, zero point, bits and qmin, as chapter 03's exposes."
    def __init__(self, scale, zero_point, bits=8, qmin=0):
        super().__init__()
        self.register_buffer('scale', torch.tensor(float(scale))); self.register_buffer('zero_point', torch.tensor(float(zero_point)))
        self.bits, self.qmin = bits, qmin
    calibrated = True
    def forward(self, x): return fake_quant(x, self.scale, self.zero_point, self.qmin, 2**self.bits - 1)


class FullStandIn(StandIn):
    "Stand-in for a fully quantized layer: fake-quantized input, then the quantized weight."
    def forward(self, x): return super().forward(self.act(x))
    def input_quantizer(self): return self.act


def full_stand_in_model(scale=0.05, zero=128., a_bits=8):
    m = build_model('tiny', n_classes=4, vocab_size=50, seed=0).eval()
    def make(name, lin):
        s = FullStandIn(lin.in_features, lin.out_features)
        s.load_state_dict(lin.state_dict()); s.bits = 4; s.act = InputQuant(scale, zero, a_bits)
        return s
    replace_linears_(m, 'all', make)
    return m


@pytest.mark.parametrize('a_bits,zero', [(8, 128.), (8, 3.), (4, 8.), (4, 0.)])
def test_static_model_matches_fake_quant(a_bits, zero):
    "With trained input ranges the integer model computes what the fake-quantized model computes, up to float rounding."
    m = full_stand_in_model(zero=zero, a_bits=a_bits)
    ids = torch.randint(0, 50, (16, 20), generator=torch.Generator().manual_seed(0))
    im = to_int(m)
    assert all(l.act == 'static' for l in im.modules() if isinstance(l, IntLinear))
    with torch.no_grad():
        torch.testing.assert_close(im(ids), m(ids), rtol=1e-4, atol=1e-4)
    dyn = to_int(m, act='dynamic')
    assert all(l.act == 'dynamic' for l in dyn.modules() if isinstance(l, IntLinear))


@pytest.mark.parametrize('scale', [float('nan'), 0.0, float('inf')])
def test_uncalibrated_is_an_error(scale):
    m = full_stand_in_model(scale=scale)
    with pytest.raises(NotConvertible, match='never calibrated'): to_int(m)
    with pytest.warns(UserWarning, match='never calibrated'): to_int(m, allow_float=True)


@pytest.mark.parametrize('lsq', [False, True])
def test_fully_quantized_model_static(lsq):
    "Chapter 03's fully quantized model: never calibrated is an error; calibrated, the integer model follows it to float rounding."
    fq = pytest.importorskip('tq_nb.fully_quantize')
    m = build_model('tiny', n_classes=4, vocab_size=50, seed=0)
    fq.fully_quantize_(m, 'all', w_bits=4, a_bits=8, lsq=lsq)
    with pytest.raises(NotConvertible, match='never calibrated'): to_int(m)
    ids = torch.randint(0, 50, (16, 20), generator=torch.Generator().manual_seed(0))
    fq.calibrate_(m, [(ids, None)]); m.eval()
    im = to_int(m)
    assert all(l.act == 'static' for l in im.modules() if isinstance(l, IntLinear))
    with torch.no_grad():
        a, b = m(ids), im(ids)
    assert (a - b).abs().mean() <= 1e-5 * a.abs().max() and (a.argmax(1) == b.argmax(1)).all()


def test_moving_decides_the_split_again():
    "Whether the product is split is a property of the device: moving the layer decides it again."
    from tq_nb.deploy import int_mm_exact
    lin = IntLinear.from_qweight(codes_qweight(6, 10, 8, 128, 0))
    lin.split = not lin.split            # as if unpacked on a device of the other kind
    lin.to('cpu')
    assert lin.split == (not int_mm_exact('cpu'))
    x = torch.randn(3, 10)
    lin.split = True                    # the split product is exact on any device: same output
    y_split = lin(x)
    lin.split = False
    if int_mm_exact('cpu'): assert torch.equal(lin(x), y_split)


@pytest.fixture(scope='module')
def int_ckpt(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        im = to_int(stand_in_model(4))
    return im, save_int(im, tmp_path_factory.mktemp('int')/'m.safetensors')


def _out(m):
    with torch.no_grad(): return m(torch.arange(1, 33).reshape(2, 16) % 50)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_damaged_checkpoint_fails_cleanly_or_loads_exactly(int_ckpt, data):
    "A truncated or flipped file raises a CheckpointError (a model passed in keeps its layers and values), or loads exactly."
    im, path = int_ckpt
    bad = test_memory.damaged(path.read_bytes(), data)
    def load(target, p): return load_int(p, model=target)
    test_memory.fails_cleanly_or_loads_exactly(load, build_model('tiny', n_classes=4, vocab_size=50, seed=2), bad, _out, _out(im))
    try: assert torch.equal(_out(load_int(bad)), _out(im))
    except CheckpointError: pass


def test_checkpoint_of_another_model_is_named(int_ckpt):
    _, path = int_ckpt
    wider = build_model('tiny', n_classes=4, vocab_size=50, d_ff=128, seed=0)
    with pytest.raises(CheckpointError, match=r"layer 'layers\.0\.ffn\.w1': .* has int weights of shape \(64, 32\), the model a Linear of shape \(128, 32\)"):
        load_int(path, model=wider)
    assert type(wider.layers[0].ffn.w1) is nn.Linear
    more = build_model('tiny', n_classes=5, vocab_size=50, seed=0)
    with pytest.raises(CheckpointError, match='n_classes 4 in the checkpoint, 5 in the model'): load_int(path, model=more)
    with pytest.raises(CheckpointError, match='holds a fake-quantized model'):
        from tq_nb.checkpoint import save_packed
        load_int(save_packed(stand_in_model(4), path.parent/'fake.safetensors'))


def test_retired_deploy_format_loads_with_a_warning(tmp_path):
    from pathlib import Path
    from safetensors.torch import load_file
    fixtures = Path(__file__).parent/'fixtures'/'checkpoints'
    e = load_file(fixtures/'expected.safetensors')
    with pytest.warns(UserWarning, match='retired format tq_nb.deploy/1, which has no checksum'):
        old = load_int(fixtures/'deploy_v1.safetensors')
    with warnings.catch_warnings():
        warnings.simplefilter('error')     # rewritten in the checksummed format: no warning
        new = load_int(save_int(old, tmp_path/'v2.safetensors'))
    with torch.no_grad(): y_old, y_new = old(e['ids']), new(e['ids'])
    assert torch.equal(y_old, y_new)      # the rewritten checkpoint is the same model, exactly
    # the fixture's logits were computed on another CPU, whose float kernels (LayerNorm, softmax) may differ in the last bit
    torch.testing.assert_close(y_old, e['deploy_logits'], rtol=1e-6, atol=1e-6)


@SETTINGS
@given(st.integers(2, 8), st.booleans(), st.sampled_from([8, 16, 32]), st.integers(2, 4), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_grouped_int_linear_within_bound(bits, symmetric, group, n_groups, n, seed):
    "A per-group weight (two or more groups a row; one group is per channel) runs group by group: within half an input step per token and group of the float layer, and stores exactly its codes."
    from tq_nb.quantize import QuantLinear
    torch.manual_seed(seed)
    k = group * n_groups
    ql = QuantLinear.from_linear(nn.Linear(k, n), bits=bits, symmetric=symmetric, per_channel=True, group_size=group).eval()
    qw, x = ql.qweight(), torch.randn(3, 5, k)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        il = IntLinear.from_qweight(qw, ql.bias)
    assert il.group_size == group and il.requantized == (bits == 8 and not symmetric)
    w = il.qweight().dequantize()                      # = qw's values unless requantized (then the new per-group grid's)
    if not il.requantized: assert torch.equal(w, qw.dequantize())
    _, sx, _ = quantize_per_token(x.reshape(-1, n_groups, group))
    bound = (sx[..., 0] / 2) @ w.abs().reshape(n, n_groups, group).sum(-1).t() + 1e-4 * (1 + F.linear(x, w).reshape(-1, n).abs())
    with torch.no_grad(): assert ((il(x) - F.linear(x, w, ql.bias)).reshape(-1, n).abs() <= bound).all()
