"""Number structure: Fourier power of the integer tokens' rows over their order.

The integers ``0, 1, ..., N-1`` that a tokenizer keeps whole (``integer_run``) are an
ordered group; read as a sequence of ``d_model``-vectors ``x_0 .. x_{N-1}``, a model that
has learned periodic structure (the last digit, round numbers) puts power at the
frequencies ``k = N / T`` of periods ``T = 2, 5, 10``. With

    F_k = sum_n (x_n - mean) e^{-2 pi i k n / N}       (a d_model-vector)

the one-sided power at ``1 <= k <= N/2`` is ``P_k = |F_k|^2 + |F_{N-k}|^2`` summed over
dimensions (the two are equal for real rows; at ``k = N/2`` the term counts once), and
``share_k = P_k / sum_k P_k``: the shares of the non-constant power, summing to 1
(Parseval: the total is ``N`` times the rows' summed squared deviations from their mean).
``Phi_T`` is ``share_{N/T}``.

``N/T`` must be an integer for the DFT to have a bin at period ``T`` (elsewhere the power
of a period-``T`` signal leaks over neighbouring bins), so the sequence is truncated to
``n_used``, the largest multiple of ``lcm(periods)`` at most ``N`` (``usable_length``):
at most ``lcm - 1`` of the largest (rarest) integers are dropped, and every share is a
share of one exact orthogonal decomposition of the kept rows. Interpolating the spectrum
between bins instead would mix leakage into ``Phi_T`` and lose that decomposition.

Two nulls, each ``n_null`` draws (docs/numbers.md states their validity conditions):

- ``perm``: the order shuffled. Under "the rows' order carries no structure" every
  permutation is as likely as the observed one, so ``p = (1 + #{null >= observed}) /
  (1 + n_null)`` is a valid one-sided p-value.
- ``freq``: what the tokens' frequencies alone produce. The rows are fitted by least
  squares on a small basis of the integers' log frequency (``1, z, z^2``, ``z`` the
  standardised Zipf frequency); each draw keeps the fitted rows in place and permutes the
  residuals. Periodicity that frequency explains (round numbers are common, and their
  rows sit where frequent tokens sit) stays in every draw; only what is left over is
  shuffled. The spectrum of the log-frequency sequence itself is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.groups import KeptToken, TokenForms

FREQUENCY_DEGREE = 2  # the frequency null's basis: 1, z, z^2 (z: standardised Zipf)
BLOCK_BYTES = 64 * 2**20  # a block of null draws' spectra (complex) kept at a time
NULL_QUANTILE = 95.0  # the band drawn and logged for each null
NUMBERS_STREAM = 0x6E756D  # "num": the spawn key of this check's random streams


def integer_run(forms: TokenForms, form: str, max_value: int) -> tuple[KeptToken, ...]:
    """The integers ``0, 1, 2, ...`` (up to ``max_value``, inclusive) that are single
    tokens in ``form`` (``bare``, ``initial`` or ``auto``, as groups choose;
    ``embsvd.groups.TokenForms.find``), up to the first that is not: ``N`` is the
    length of the returned run. The run also stops at an integer whose token an earlier
    one already took (the order would repeat a row)."""
    run: list[KeptToken] = []
    taken: set[int] = set()
    for n in range(max_value + 1):
        found = forms.find(str(n), form)
        if not isinstance(found, KeptToken) or found.token_id in taken:
            break
        run.append(found)
        taken.add(found.token_id)
    return tuple(run)


def usable_length(n: int, periods: Sequence[int]) -> int:
    """The largest multiple of ``lcm(periods)`` that is at most ``n`` (0 where none is):
    the length at which every period has an exact DFT bin ``k = n / T``."""
    step = math.lcm(*periods)
    return (n // step) * step


def power_shares(X: np.ndarray) -> np.ndarray:
    """The one-sided Fourier power shares of rows ordered along axis ``-2``.

    Args:
        X: ``(..., N, d)`` rows in their order (a batch of sequences allowed).

    Returns:
        ``(..., N // 2)``: the share of the non-constant power at ``k = 1 .. N // 2``
        (power at ``k`` and ``N - k`` together; ``k = N/2`` once), summed over the
        ``d`` dimensions; NaN where the rows are all equal (no power to share).
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[-2]
    F = np.fft.rfft(X - X.mean(axis=-2, keepdims=True), axis=-2)[..., 1 : n // 2 + 1, :]
    power = (F.real**2 + F.imag**2).sum(axis=-1)
    power[..., : (n - 1) // 2] *= 2  # the mirror bin N - k; the Nyquist bin has none
    total = power.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, power / total, np.nan)


def frequency_basis(log_frequency: np.ndarray, degree: int = FREQUENCY_DEGREE) -> np.ndarray:
    """``(N, degree + 1)``: ``1, z, ..., z^degree`` of the standardised log frequency
    ``z``; the constant alone where the frequencies are all equal."""
    z = np.asarray(log_frequency, dtype=np.float64)
    sd = z.std()
    if not sd > 0:
        return np.ones((len(z), 1))
    z = (z - z.mean()) / sd
    return np.vander(z, degree + 1, increasing=True)


def frequency_fit(X: np.ndarray, log_frequency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fitted, residual)``, each ``(N, d)``: the least-squares fit of every column of
    ``X`` on ``frequency_basis(log_frequency)``, and what it leaves."""
    X = np.asarray(X, dtype=np.float64)
    basis = frequency_basis(log_frequency)
    coefficients, *_ = np.linalg.lstsq(basis, X, rcond=None)
    fitted = basis @ coefficients
    return fitted, X - fitted


@dataclass(frozen=True)
class NullBand:
    """One null's spectra, summarised per frequency ``k = 1 .. n_used // 2``.

    Attributes:
        mean: ``(K,)`` the draws' mean share.
        q95: ``(K,)`` their 95th percentile (the figure's band).
        p_value: ``(K,)`` ``(1 + #{draw >= observed}) / (1 + n_draws)``, one-sided: the
            observed share is larger than the null's.
        n_draws: draws the summaries are made of.
    """

    mean: np.ndarray
    q95: np.ndarray
    p_value: np.ndarray
    n_draws: int


@dataclass(frozen=True)
class NumberStructure:
    """The number-structure check of one matrix.

    Attributes:
        n_run: ``N``, the integers ``0 .. N-1`` the tokenizer keeps whole.
        n_used: The first ``n_used`` of them, analysed (``usable_length``).
        periods: The periods tested.
        share: ``(K,)`` observed power share at ``k = 1 .. K``, ``K = n_used // 2``.
        perm: The order-permutation null.
        freq: The frequency-only null.
        zipf_share: ``(K,)`` the power shares of the log-frequency sequence itself.
        frequency_r2: Share of the rows' variance (about their mean) the frequency basis
            explains: how much the frequency null keeps in place.
    """

    n_run: int
    n_used: int
    periods: tuple[int, ...]
    share: np.ndarray
    perm: NullBand
    freq: NullBand
    zipf_share: np.ndarray
    frequency_r2: float

    @property
    def frequencies(self) -> np.ndarray:
        """``(K,)`` the frequencies ``k = 1 .. K``."""
        return np.arange(1, len(self.share) + 1)

    @property
    def spectrum_periods(self) -> np.ndarray:
        """``(K,)`` the period ``n_used / k`` of each frequency."""
        return self.n_used / self.frequencies

    def index(self, period: int) -> int:
        """The position of period ``period`` in the spectrum arrays (``k - 1``)."""
        return self.n_used // period - 1

    def phi(self, period: int) -> float:
        """``Phi_T``: the power share at period ``T = period``."""
        return float(self.share[self.index(period)])


def number_structure(
    X: np.ndarray,
    log_frequency: np.ndarray,
    periods: Sequence[int],
    n_null: int,
    random_state: int = 0,
    *,
    n_run: int | None = None,
) -> NumberStructure:
    """Fourier power shares of the ordered rows ``X`` and both nulls.

    Args:
        X: ``(N, d)`` the rows of the integers ``0 .. N-1`` in order; the first
            ``usable_length(N, periods)`` are analysed.
        log_frequency: ``(N,)`` each integer's log frequency (Zipf).
        periods: Periods ``T`` (each at least 2) to test.
        n_null: Draws of each null (at least 2).
        random_state: Seeds both nulls (``null_streams``).
        n_run: ``N`` as the tokenizer gave it, where ``X`` was cut already.

    Raises:
        ValueError: ``X`` is shorter than ``lcm(periods)``, or the lengths disagree.
    """
    X = np.asarray(X, dtype=np.float64)
    log_frequency = np.asarray(log_frequency, dtype=np.float64)
    if len(log_frequency) != len(X):
        raise ValueError(
            f"log_frequency: {len(log_frequency)} values for {len(X)} rows; give one per row"
        )
    n_used = usable_length(len(X), periods)
    if n_used < 2:
        raise ValueError(
            f"numbers: {len(X)} integers in a row, fewer than lcm(periods) = "
            f"{math.lcm(*periods)}; no period has a Fourier bin (use shorter periods)"
        )
    X, log_frequency = X[:n_used], log_frequency[:n_used]
    share = power_shares(X)
    perm_rng, freq_rng = null_streams(random_state)
    fitted, residual = frequency_fit(X, log_frequency)
    deviation = ((X - X.mean(axis=0)) ** 2).sum()
    explained = ((fitted - fitted.mean(axis=0)) ** 2).sum()
    return NumberStructure(
        n_run=len(X) if n_run is None else n_run,
        n_used=n_used,
        periods=tuple(periods),
        share=share,
        perm=_null_band(share, np.zeros_like(X), X, n_null, perm_rng),
        freq=_null_band(share, fitted, residual, n_null, freq_rng),
        zipf_share=power_shares(log_frequency[:, None]),
        frequency_r2=float(explained / deviation) if deviation > 0 else float("nan"),
    )


def null_streams(random_state: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The permutation null's and the frequency null's streams: spawned from
    ``random_state`` under a spawn key of their own (``NUMBERS_STREAM``), so that they are
    independent of the run's other checks (``embsvd.checks.run``: keys 0, 1, 2) and of
    each other, and a draw count of one changes nothing in the other."""
    seed = np.random.SeedSequence(random_state, spawn_key=(NUMBERS_STREAM,))
    perm, freq = seed.spawn(2)
    return np.random.default_rng(perm), np.random.default_rng(freq)


def _null_band(
    observed: np.ndarray,
    fixed: np.ndarray,
    shuffled: np.ndarray,
    n_draws: int,
    rng: np.random.Generator,
) -> NullBand:
    """Spectra of ``fixed + shuffled[permutation]`` over ``n_draws`` permutations, in
    blocks of draws small enough to keep their transforms in ``BLOCK_BYTES``."""
    n, d = shuffled.shape
    orders = np.argsort(rng.random((n_draws, n)), axis=1)  # uniform permutations
    block = max(1, BLOCK_BYTES // (16 * n * d))
    draws = np.concatenate(
        [
            power_shares(fixed + shuffled[orders[start : start + block]])
            for start in range(0, n_draws, block)
        ]
    )
    # ties count as exceeding: a permutation that gives the observed spectrum back (up to
    # rounding in the last bits) is as extreme as the observed order
    exceed = (draws >= observed - 1e-12 * np.abs(observed)).sum(axis=0)
    p_value = np.where(np.isnan(observed), np.nan, (1 + exceed) / (1 + n_draws))
    return NullBand(
        mean=draws.mean(axis=0),
        q95=np.percentile(draws, NULL_QUANTILE, axis=0),
        p_value=p_value,
        n_draws=n_draws,
    )
