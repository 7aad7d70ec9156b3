"""Kernels split over threads (`tinysd.kernels.threads.run_ranges`) give the reference's integers, with range
boundaries that fall inside causal masks and norm groups."""
import numpy as np
import pytest

from tinysd.kernels import threads
from tinysd.kernels.norm import group_norm, group_norm_reference, layer_norm, layer_norm_reference, prepare_group_norm
from tinysd.kernels.softmax import make_exp_table, softmax, softmax_reference
from tinysd.kernels.tables import apply_table, apply_table_reference

DT = {8: np.uint8, 16: np.uint16}


@pytest.fixture
def three_threads(monkeypatch):
    """Every call split in 3 ranges, however small."""
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(threads, "thread_count", lambda: 3)


@pytest.mark.parametrize("bits", [8, 16])
def test_threaded_kernels_bit_equal(three_threads, bits):
    rng = np.random.default_rng(bits)
    x = rng.integers(0, 2**bits, size=(2, 3, 11, 11), dtype=DT[bits])  # 66 rows: ranges of 22, inside a (11, 11)
    E = make_exp_table(0.08 if bits == 8 else 3e-4, bits)
    for causal in (False, True):
        np.testing.assert_array_equal(softmax(x, E, 8, causal), softmax_reference(x, E, 8, causal))
    table = rng.integers(0, 2**bits, size=2**bits, dtype=DT[bits])
    np.testing.assert_array_equal(apply_table(x, table), apply_table_reference(x, table))
    xg = rng.integers(0, 2**bits, size=(2, 6, 17, 17), dtype=DT[bits])  # 8-bit: the table path (289 > 256)
    p = prepare_group_norm(rng.normal(1, 0.5, 6), rng.normal(0, 0.5, 6), 1e-5, 0.05 if bits == 8 else 2e-4,
                           2 ** (bits - 1), bits, 10 / 2**bits, 2 ** (bits - 1), bits)
    np.testing.assert_array_equal(group_norm(xg, 3, p), group_norm_reference(xg, 3, p))  # 6 rows in 3 ranges
    np.testing.assert_array_equal(layer_norm(xg[..., :6].transpose(0, 2, 3, 1), p),
                                  layer_norm_reference(xg[..., :6].transpose(0, 2, 3, 1), p))


def test_run_ranges_covers_every_item_once(monkeypatch):
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    for n, t in ((1, 4), (5, 3), (64, 2), (7, 7)):
        monkeypatch.setattr(threads, "thread_count", lambda t=t: t)
        seen = []
        threads.run_ranges(lambda r0, r1, acc: acc.extend(range(r0, r1)), n, 1, seen)
        assert sorted(seen) == list(range(n))
