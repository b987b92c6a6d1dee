"""Property tests for chapter 05 (tq_nb.size, tq_nb.checkpoint, tq_nb.memory): exact pack/unpack round trips for every
bit width, hand-counted sizes, ratio 1.0 with nothing quantized, exact checkpoint round trips for every method, clean
failures on bad files, files of the retired formats, and a quiet profiler."""
import subprocess, sys

import torch
from hypothesis import given, settings, strategies as st
from tq_nb.size import pack_bits, unpack_bits, packed_nbytes, packed_width


@st.composite
def codes_and_bits(draw):
    bits = draw(st.integers(1, 8))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=3)))
    n = 1
    for s in shape: n *= s
    vals = draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n))
    return torch.tensor(vals, dtype=torch.uint8).reshape(shape), bits


@settings(max_examples=300, deadline=None)
@given(codes_and_bits())
def test_pack_round_trip_is_exact(cb):
    codes, bits = cb
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(codes.numel(), bits)
    assert torch.equal(unpack_bits(packed, bits, codes.shape), codes)
    assert torch.equal(unpack_bits(packed, bits, codes.numel()), codes.reshape(-1))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(0, 200))
def test_packed_size_is_ceil_of_width(bits, n):
    w = packed_width(bits)
    assert w >= bits and 8 % w == 0
    assert packed_nbytes(n, bits) * 8 >= n * w > (packed_nbytes(n, bits) - 1) * 8


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 2, 4]), st.lists(st.integers(0, 255), min_size=1, max_size=40))
def test_every_byte_pattern_unpacks_and_repacks(bits, raw):
    # at widths that divide 8 every byte is valid: unpack then pack gives the same bytes back
    packed = torch.tensor(raw, dtype=torch.uint8)
    n = len(raw) * 8 // bits
    assert torch.equal(pack_bits(unpack_bits(packed, bits, n), bits), packed)


# ---- counted sizes, ratio 1.0, checkpoint errors -------------------------------------------------
import math, tempfile
from pathlib import Path
import pytest
import torch.nn.functional as F
from torch import nn
from tq_nb.transformer import QuantizedLinear, QWeight, build_model
from tq_nb.size import model_size
from tq_nb.checkpoint import CheckpointError, PinnedLinear, checkpoint_sizes, load_packed, save_packed


class HandQuant(QuantizedLinear):
    "Per-row symmetric quantization with scale and zero point stored at chosen dtypes (for hand-counted sizes)."
    def __init__(self, lin, bits, scale_dtype=torch.float32, zp_dtype=torch.float32, per_row_zp=False):
        super().__init__(lin.in_features, lin.out_features, lin.bias is not None)
        self.load_state_dict(lin.state_dict())
        self.bits = bits
        self.scale_dtype, self.zp_dtype, self.per_row_zp = scale_dtype, zp_dtype, per_row_zp
    def qweight(self):
        w = self.weight.detach()
        zp = 2**(self.bits - 1)
        qmax = max(zp - 1, 1)
        scale = (w.abs().amax(1, keepdim=True).clamp_min(1e-6) / qmax).to(self.scale_dtype)
        codes = (w / scale.float()).round().clamp(-zp, 2**self.bits - 1 - zp) + zp
        z = torch.full((w.shape[0], 1) if self.per_row_zp else (), zp, dtype=self.zp_dtype)
        return QWeight(codes.to(torch.uint8), self.bits, scale, z)
    def forward(self, x):
        return F.linear(x, self.qweight().dequantize() if self.quant_enabled else self.weight, self.bias)


class TwoLayer(nn.Module):
    def __init__(self, d_in, d_hid, d_out, bias):
        super().__init__()
        self.ffn = nn.Module()
        self.ffn.w1, self.ffn.w2 = nn.Linear(d_in, d_hid, bias=bias), nn.Linear(d_hid, d_out, bias=bias)
    def forward(self, x): return self.ffn.w2(F.relu(self.ffn.w1(x)))


dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int32])

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5), st.booleans(),
       st.sampled_from([torch.float32, torch.float16]), dtypes, st.booleans())
def test_two_layer_size_matches_hand_count(bits, d_in, d_hid, d_out, bias, sdt, zdt, per_row_zp):
    torch.manual_seed(0)
    m = TwoLayer(d_in, d_hid, d_out, bias)
    m.ffn.w1 = HandQuant(m.ffn.w1, bits, sdt, zdt, per_row_zp)
    width = next(w for w in (1, 2, 4, 8) if w >= bits)
    codes = math.ceil(d_in * d_hid * width / 8)
    scales = d_hid * (2 if sdt == torch.float16 else 4)
    zps = (d_hid if per_row_zp else 1) * torch.empty((), dtype=zdt).element_size()
    biases = (d_hid + d_out) * 4 if bias else 0
    fp = d_hid * d_out * 4
    total = codes + scales + zps + biases + fp
    ms = model_size(m)
    assert ms.loc['total', 'bytes'] == total
    assert ms.loc['total', 'weight_bytes'] == codes
    assert ms.loc['total', 'overhead_bytes'] == scales + zps
    assert ms.loc['total', 'fp32_bytes'] == (d_in * d_hid + d_hid * d_out + (d_hid + d_out if bias else 0)) * 4
    assert ms.loc['total', 'ideal_weight_bytes'] == d_in * d_hid * bits / 8
    assert ms.loc['embeddings', 'bytes'] == 0 and ms.loc['total_without_embeddings', 'bytes'] == total


@pytest.mark.parametrize('kw', [dict(), dict(image_size=28, n_classes=10)])
def test_nothing_quantized_has_ratio_one(kw):
    m = build_model('tiny', **{'n_classes': 4, **kw}, seed=0)
    ms = model_size(m)
    assert ms.loc['total', 'ratio'] == 1.0 and ms.loc['total_without_embeddings', 'ratio'] == 1.0
    assert ms.loc['total', 'bytes'] == sum(p.numel() * 4 for p in m.parameters())


def _quantized(seed, bits=4, d_ff=64):
    m = build_model('tiny', n_classes=4, seed=seed, d_ff=d_ff)
    from tq_nb.transformer import replace_linears_
    replace_linears_(m, 'all|~cls.final', lambda n, lin: HandQuant(lin, bits))
    return m.eval()


@pytest.fixture(scope='module')
def ckpt():
    d = Path(tempfile.mkdtemp())
    m = _quantized(0)
    save_packed(m, d/'m.safetensors')
    return m, d/'m.safetensors'


def _out(m):
    ids = torch.arange(1, 33).reshape(2, 16) % 256
    with torch.no_grad(): return m(ids)


def test_file_size_matches_computed_and_loads_exactly(ckpt):
    m, path = ckpt
    cs = checkpoint_sizes(path)
    assert cs['data'] == model_size(m).loc['total', 'bytes']
    assert torch.equal(_out(load_packed(_quantized(1), path)), _out(m))


@pytest.mark.parametrize('other, layer', [(lambda: _quantized(0, bits=8), 'layers.0.mha.q'),
                                          (lambda: _quantized(0, d_ff=128), 'layers.0.ffn.w1')])
def test_mismatched_configuration_names_the_layer(ckpt, other, layer):
    _, path = ckpt
    with pytest.raises(CheckpointError, match=f"layer '{layer}'"): load_packed(other(), path)


def damaged(raw: bytes, data) -> Path:
    "A copy of the file bytes `raw`, truncated or with one byte flipped (as hypothesis draws), written to a fresh folder."
    if data.draw(st.booleans(), label='truncate'):
        bad = raw[:data.draw(st.integers(0, len(raw) - 1), label='keep')]
    else:
        pos, flip = data.draw(st.integers(0, len(raw) - 1), label='pos'), data.draw(st.integers(1, 255), label='xor')
        bad = bytearray(raw); bad[pos] ^= flip; bad = bytes(bad)
    path = Path(tempfile.mkdtemp())/'bad.safetensors'
    path.write_bytes(bad)
    return path


def fails_cleanly_or_loads_exactly(load, target, path, out, ref):
    "`load(target, path)` raises a CheckpointError and leaves `target` as it was, or loads it to outputs `ref` exactly."
    before = {k: v.clone() for k, v in target.state_dict().items()}
    kinds = [type(m) for m in target.modules()]
    try:
        load(target, path)
    except CheckpointError:
        assert [type(m) for m in target.modules()] == kinds, 'layers changed'
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), 'half-loaded'
    else:  # a flip that leaves the file meaning the same (e.g. in header padding) must still load exactly
        assert torch.equal(out(target), ref)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_corruption_fails_cleanly_or_loads_exactly(ckpt, data):
    m, path = ckpt
    fails_cleanly_or_loads_exactly(load_packed, _quantized(2), damaged(path.read_bytes(), data), _out, _out(m))


# ---- every method of the package round-trips exactly through a packed checkpoint ----------------
def _method_model(method, seed):
    from tq_nb.quantize import quantize_
    from tq_nb.binarize import binarize_
    from tq_nb.fully_quantize import fully_quantize_, calibrate_
    m = build_model('tiny', n_classes=4, seed=seed)
    kind, kw = method
    if kind == 'quantize': quantize_(m, **kw)
    elif kind == 'binarize': binarize_(m, **kw)
    else:
        fully_quantize_(m, **kw)
        calibrate_(m, [torch.randint(1, 256, (8, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)])
    return m.eval()

METHODS = [('quantize', dict(bits=b, symmetric=s, per_channel=p)) for b in (2, 3, 8) for s in (True, False) for p in (True, False)]
METHODS += [('binarize', dict(method=m, binarize_act=a)) for m in ('basic', 'scaled', 'irnet') for a in (False, True)]
METHODS += [('fully', kw) for kw in (dict(), dict(w_bits=4, a_bits=4, per_channel=True), dict(lsq=True, attn='qkpv'))]

@pytest.mark.parametrize('method', METHODS, ids=[f'{k}-{"-".join(f"{a}={b}" for a, b in kw.items())}' for k, kw in METHODS])
def test_every_method_round_trips_exactly(method, tmp_path):
    a = _method_model(method, 0)
    save_packed(a, tmp_path/'m.safetensors')
    assert checkpoint_sizes(tmp_path/'m.safetensors')['data'] == model_size(a).loc['total', 'bytes']
    b = load_packed(_method_model(method, 1), tmp_path/'m.safetensors')
    assert torch.equal(_out(b), _out(a))


def test_profiling_prints_nothing():
    "activation_memory on a CPU machine leaves no profiler log lines (profiler_start/stop, gpuGetDeviceCount) on stderr."
    code = ("import torch; from tq_nb.transformer import build_model; from tq_nb.memory import activation_memory; "
            "activation_memory(build_model('tiny', n_classes=3, vocab_size=50), batch=2); print('ok')")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr
    assert 'profiler_start' not in r.stderr and 'gpuGetDeviceCount' not in r.stderr, r.stderr


# ---- files of the retired format, pinned layers, the names tq_nb.memory keeps ------------------------------
FIXTURES = Path(__file__).parent/'fixtures'/'checkpoints'

def _fixture_model(seed):
    "The model tests/fixtures/checkpoints/make_v1_fixtures.py saved, built again from `seed`."
    from tq_nb.quantize import quantize_
    from tq_nb.binarize import binarize_
    m = build_model('tiny', n_classes=3, vocab_size=50, seed=seed)
    quantize_(m, 'mha', bits=4, per_channel=True)
    binarize_(m, 'ffn', method='scaled', binarize_act=True)
    return m.eval()


@pytest.fixture(scope='module')
def expected():
    from safetensors.torch import load_file
    return load_file(FIXTURES/'expected.safetensors')


def _fixture_out(ids):
    def out(m):
        with torch.no_grad(): return m(ids)
    return out


def test_retired_packed_format_loads_exactly(expected, tmp_path):
    out = _fixture_out(expected['ids'])
    m = load_packed(_fixture_model(1), FIXTURES/'packed_v1.safetensors')
    # the fixture's logits were computed on another CPU, whose float kernels may differ in the last bit
    torch.testing.assert_close(out(m), expected['packed_logits'], rtol=1e-6, atol=1e-6)
    assert isinstance(m.layers[0].ffn.w1, PinnedLinear) and not isinstance(m.layers[0].mha.q, PinnedLinear)
    again = load_packed(_fixture_model(2), save_packed(m, tmp_path/'v2.safetensors'))
    assert torch.equal(out(again), out(m))      # rewritten in the current format: the same model, exactly


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_retired_packed_format_corruption_is_caught(expected, data):
    path = damaged((FIXTURES/'packed_v1.safetensors').read_bytes(), data)
    out = _fixture_out(expected['ids'])
    intact = out(load_packed(_fixture_model(1), FIXTURES/'packed_v1.safetensors'))   # on this CPU, so compared exactly
    fails_cleanly_or_loads_exactly(load_packed, _fixture_model(3), path, out, intact)


def test_pinned_layer_is_a_class_not_patched_methods(expected):
    from tq_nb.binarize import BinaryLinear
    m = load_packed(_fixture_model(1), FIXTURES/'packed_v1.safetensors')
    layer = m.layers[0].ffn.w1
    assert type(layer).__name__ == 'PinnedBinaryLinear' and isinstance(layer, BinaryLinear)
    assert not {'forward', 'qweight', 'to_linear'} & set(vars(layer)), 'methods patched on the instance'
    assert 'pinned to stored 1-bit codes' in repr(layer)
    load_packed(m, save_packed(_fixture_model(4), Path(tempfile.mkdtemp())/'other.safetensors'))   # loading again re-pins
    assert type(m.layers[0].ffn.w1) is type(layer)


def test_other_kind_and_other_format_are_named():
    with pytest.raises(CheckpointError, match='holds a converted integer model .written by save_int.: load it with load_int'):
        load_packed(_fixture_model(0), FIXTURES/'deploy_v1.safetensors')
    with pytest.raises(CheckpointError, match="is not a tq_nb.lowbit/1 checkpoint .format None."):
        load_packed(_fixture_model(0), FIXTURES/'expected.safetensors')


def test_memory_keeps_the_names_it_had():
    "Code written before chapter 05 was split imports size accounting and checkpoints from tq_nb.memory."
    from tq_nb import checkpoint, memory, size
    for n in ('PACK_WIDTHS', 'pack_bits', 'unpack_bits', 'packed_nbytes', 'packed_width', 'param_table', 'quantized_layers',
              'size_breakdown', 'model_size'):
        assert getattr(memory, n) is getattr(size, n), n
    for n in ('save_packed', 'load_packed', 'checkpoint_sizes', 'packed_tensors', 'CheckpointError'):
        assert getattr(memory, n) is getattr(checkpoint, n), n

# --- per-group weights (issue 14): counted and round-tripped with their grouped scales ---
@settings(max_examples=12, deadline=None)
@given(st.integers(2, 8), st.sampled_from([1, 4, 8, 16, 32]), st.booleans())
def test_grouped_weights_size_and_round_trip(bits, group_size, symmetric):
    from tq_nb.quantize import QuantLinear, quantize_
    def make(seed):
        m = build_model('tiny', n_classes=3, seed=seed); quantize_(m, 'ffn', bits=bits, symmetric=symmetric, group_size=group_size)
        return m.eval()
    m = make(0)
    grouped = {n: l for n, l in m.named_modules() if isinstance(l, QuantLinear)}
    assert len(grouped) == 4 and all(l.group_size == group_size for l in grouped.values())
    # a float32 scale and a float32 zero point per group, nothing else beside the codes
    assert model_size(m).loc['total', 'overhead_bytes'] == sum(l.out_features * (l.in_features // group_size) * 8 for l in grouped.values())
    with tempfile.TemporaryDirectory() as d:
        p = save_packed(m, Path(d)/'g.safetensors')
        assert checkpoint_sizes(p)['data'] == model_size(m).loc['total', 'bytes']
        fresh = load_packed(make(1), p)
    assert torch.equal(_out(fresh), _out(m))
    for n, a in grouped.items():
        qa, qb = a.qweight(), fresh.get_submodule(n).qweight()
        assert type(qa) is type(qb) and all(torch.equal(x, y) for x, y in [(qa.codes, qb.codes), (qa.scale, qb.scale), (qa.zero_point, qb.zero_point)])
