"""Property tests for tq_nb.memory: exact pack/unpack round trips for every bit width."""
import torch
from hypothesis import given, settings, strategies as st
from tq_nb.memory import pack_bits, unpack_bits, packed_nbytes, packed_width


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
