"""HE parameters: the 128-bit security table, refusal of weaker sets, the int64 budget."""

from __future__ import annotations

import pytest

pytest.importorskip("tenseal", reason="the he and hybrid schemes need TenSEAL (pip install tenseal)")

from tenseal import sealapi  # noqa: E402

from fpmatch.errors import FpmatchError, InvalidInputError  # noqa: E402
from fpmatch.he import DEFAULT_PARAMS, HE_STANDARD_128, HEParams, InsecureParametersError, check_security  # noqa: E402


def test_table_is_the_he_standard_one_seal_uses() -> None:
    assert HE_STANDARD_128[4096] == 109 and HE_STANDARD_128[8192] == 218 and HE_STANDARD_128[16384] == 438
    for n, bits in HE_STANDARD_128.items():
        assert sealapi.CoeffModulus.MaxBitCount(n, sealapi.SEC_LEVEL_TYPE.TC128) == bits


@pytest.mark.parametrize(
    "n, primes",
    [
        (4096, (50, 60)),  # 110 > 109
        (4096, (60, 60)),
        (8192, (60, 60, 60, 60)),  # 240 > 218
        (2048, (44, 20)),  # 64 > 54
        (16384, (60,) * 8),  # 480 > 438
        (1000, (44, 60)),  # no entry in the standard
        (512, (20, 20)),
    ],
)
def test_weaker_than_128_bits_is_refused(n: int, primes: tuple[int, ...]) -> None:
    with pytest.raises(InsecureParametersError) as info:
        HEParams(n, primes)
    assert isinstance(info.value, FpmatchError) and isinstance(info.value, ValueError)
    with pytest.raises(InsecureParametersError):
        check_security(n, primes)


def test_message_names_the_limit() -> None:
    with pytest.raises(InsecureParametersError, match="at most 109 bits"):
        HEParams(4096, (50, 60))


@pytest.mark.parametrize("n", [4096, 8192, 16384])
def test_secure_sets_are_accepted(n: int) -> None:
    params = HEParams(n, (44, 60))
    assert sum(params.coeff_mod_bit_sizes) <= HE_STANDARD_128[n]


def test_default_is_secure_and_leaves_range_headroom() -> None:
    assert sum(DEFAULT_PARAMS.coeff_mod_bit_sizes) <= HE_STANDARD_128[DEFAULT_PARAMS.poly_modulus_degree]
    assert DEFAULT_PARAMS.data_prime_bits - 1 - DEFAULT_PARAMS.scale_bits >= 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"coeff_mod_bit_sizes": (44,)},  # no special prime
        {"coeff_mod_bit_sizes": (40, 30, 30)},  # two data primes
        {"coeff_mod_bit_sizes": (30, 60)},  # data prime too small for the scale
        {"coeff_mod_bit_sizes": (44.0, 60)},
        {"template_scale_bits": 40},
        {"probe_scale_bits": 4},
    ],
)
def test_unusable_sets_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        HEParams(**kwargs)


def test_probe_scale_keeps_int64_sums_exact() -> None:
    params = DEFAULT_PARAMS
    assert params.probe_scale_bits_for(128) == 14
    assert params.probe_scale_bits_for(512) == 14
    assert params.probe_scale_bits_for(4096) == 13
    for dim in (128, 512, 1024, 2048, 4096):
        bits = params.probe_scale_bits_for(dim)
        worst = (2 ** (params.data_prime_bits - 1)) * (2**bits * dim**0.5 + dim)
        assert worst < 2**63
    with pytest.raises(InvalidInputError):
        params.probe_scale_bits_for(5000)
    with pytest.raises(InvalidInputError):
        params.probe_scale_bits_for(0)
