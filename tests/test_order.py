"""The circle and order test (``embsvd.checks.order``) on planted geometries, against direct
double loops, brute-force enumerations and scipy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from embsvd.checks.order import CyclicOrder, LinearOrder, fisher_lee, order_test
from embsvd.method.analysis import decompose

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
D_MODEL = 16


def random_plane(rng: np.random.Generator) -> np.ndarray:
    """Two orthonormal directions of the ``D_MODEL``-dim space, ``(2, D_MODEL)``."""
    Q, _ = np.linalg.qr(rng.normal(size=(D_MODEL, 2)))
    return Q.T


def planted_circle(
    n: int, slots: np.ndarray | None = None, noise: float = 0.01, seed: int = 0
) -> np.ndarray:
    """``(n, D_MODEL)`` rows on a unit circle in a random plane, far from the origin: row
    ``i`` sits at angle ``2 pi slots[i] / n`` (``slots = i``, calendar order, by default)."""
    rng = np.random.default_rng(seed)
    slots = np.arange(n) if slots is None else np.asarray(slots)
    angles = 2 * np.pi * slots / n
    circle = np.column_stack([np.cos(angles), np.sin(angles)])
    return 3.0 + circle @ random_plane(rng) + noise * rng.normal(size=(n, D_MODEL))


def planted_line(axis_values: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n, D_MODEL)`` rows whose main axis of variation carries ``axis_values`` (spaced
    at least 1 apart), with a small spread along a second direction."""
    rng = np.random.default_rng(seed)
    plane = random_plane(rng)
    side = 0.1 * rng.normal(size=len(axis_values))
    return 3.0 + np.outer(axis_values, plane[0]) + np.outer(side, plane[1])


def test_planted_circle_in_calendar_order_is_found():
    order = order_test(planted_circle(12), MONTHS, "cyclic")
    assert isinstance(order, CyclicOrder)
    assert order.neighbours == 12
    assert abs(order.circular_corr) > 0.95
    assert not order.exact and order.n_permutations == 10000
    # no random order of 12 reaches 12 neighbours in 10000 draws: Phipson-Smyth's floor
    assert order.neighbours_p == pytest.approx(1 / 10001)
    assert order.circular_corr_p == pytest.approx(1 / 10001)
    assert order.coordinates.shape == (12, 2) and order.angles.shape == (12,)
    # walking around by angle visits the calendar as a rotation of it, either way round
    steps = np.diff(np.array(order.angular_order + order.angular_order[:1])) % 12
    assert set(steps) in ({1}, {11})


def test_shuffled_labels_are_not_an_order():
    # row i at slot 5 i mod 12: walking around the circle, declared positions step by 5
    stepped = order_test(planted_circle(12, slots=5 * np.arange(12) % 12), MONTHS, "cyclic")
    assert stepped.neighbours == 0
    assert stepped.neighbours_p == 1.0  # every order has at least 0 neighbours
    assert abs(stepped.circular_corr) < 0.05 and stepped.circular_corr_p > 0.5
    shuffled = order_test(
        planted_circle(12, slots=np.random.default_rng(7).permutation(12)), MONTHS, "cyclic"
    )
    assert shuffled.neighbours <= 4
    assert shuffled.neighbours_p > 0.1 and shuffled.circular_corr_p > 0.1


def test_swapping_jan_and_feb_breaks_two_neighbour_pairs():
    slots = np.arange(12)
    slots[[0, 1]] = [1, 0]
    # around the circle: feb, jan, mar, ...: dec-feb and jan-mar are not calendar neighbours
    assert order_test(planted_circle(12, slots=slots), MONTHS, "cyclic").neighbours == 10


def test_seven_weekdays_on_a_circle_get_the_exact_floor_of_p():
    order = order_test(planted_circle(7, noise=0.0), WEEKDAYS, "cyclic")
    assert order.exact and order.n_permutations == 5040
    assert order.neighbours == 7
    # the 14 rotations and reflections of the calendar tie: p cannot go below 14 / 7!
    assert order.neighbours_p == pytest.approx(14 / 5040)
    assert order.circular_corr_p == pytest.approx(14 / 5040)
    assert abs(order.circular_corr) == pytest.approx(1.0)


def test_exact_p_values_match_a_brute_force_enumeration():
    M = planted_circle(7, noise=0.3, seed=3)  # noisy enough that the order is imperfect
    order = order_test(M, WEEKDAYS, "cyclic")
    around = np.argsort(order.angles)
    reached_neighbours = reached_corr = 0
    for labels in itertools.permutations(range(7)):
        walk = np.array(labels)[around]
        gaps = np.abs(walk - np.roll(walk, -1)) % 7
        neighbours = np.sum((gaps == 1) | (gaps == 6))
        corr = fisher_lee(order.angles, 2 * np.pi * np.array(labels) / 7)
        reached_neighbours += neighbours >= order.neighbours
        reached_corr += abs(corr) >= abs(order.circular_corr) - 1e-12
    assert order.neighbours_p == pytest.approx(reached_neighbours / 5040)
    assert order.circular_corr_p == pytest.approx(reached_corr / 5040)
    assert 14 / 5040 < order.circular_corr_p < 1.0


def double_loop_fisher_lee(a: np.ndarray, b: np.ndarray) -> float:
    """Fisher and Lee (1983) written out pair by pair."""
    numerator = sum_a = sum_b = 0.0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            numerator += np.sin(a[i] - a[j]) * np.sin(b[i] - b[j])
            sum_a += np.sin(a[i] - a[j]) ** 2
            sum_b += np.sin(b[i] - b[j]) ** 2
    return numerator / np.sqrt(sum_a * sum_b)


def test_fisher_lee_matches_a_double_loop_and_its_symmetries():
    rng = np.random.default_rng(1)
    a = rng.uniform(-np.pi, np.pi, 9)
    B = rng.uniform(-np.pi, np.pi, (4, 9))
    rows = [double_loop_fisher_lee(a, b) for b in B]
    np.testing.assert_allclose(fisher_lee(a, B), rows, rtol=1e-12)
    assert fisher_lee(a, B[0]) == pytest.approx(rows[0], rel=1e-12)
    # rotating either set of angles leaves it unchanged; reflecting one flips its sign
    assert fisher_lee(a + 1.3, B[0] - 0.4) == pytest.approx(rows[0], rel=1e-12)
    assert fisher_lee(-a, B[0]) == pytest.approx(-rows[0], rel=1e-12)
    assert fisher_lee(a, -B[0]) == pytest.approx(-rows[0], rel=1e-12)


def test_points_ordered_along_an_axis_are_a_linear_order():
    order = order_test(planted_line(np.arange(10.0)), [str(d) for d in range(10)], "linear")
    assert isinstance(order, LinearOrder)
    assert abs(order.spearman) == pytest.approx(1.0)
    assert order.spearman_p == pytest.approx(1 / 10001)
    assert np.isnan(order.partial_spearman) and np.isnan(order.partial_spearman_p)
    exact = order_test(planted_line(np.arange(8.0)), [str(d) for d in range(8)], "linear")
    assert exact.exact and exact.n_permutations == 40320
    assert exact.spearman_p == pytest.approx(2 / 40320)  # the order and its reverse


def test_a_frequency_ordered_axis_is_not_called_an_order_axis():
    # ranks (0 = first) of frequency and of the axis along 12 declared positions: the axis
    # follows frequency, and frequency follows the position, so the axis correlates with
    # the position (0.84) only through frequency: rho(axis, position) = rho(axis,
    # frequency) rho(frequency, position) exactly, which makes the partial rho 0
    frequency_rank = np.array([1, 0, 5, 3, 2, 4, 8, 7, 6, 10, 9, 11])
    axis_rank = np.array([1, 0, 5, 3, 4, 2, 8, 9, 7, 10, 6, 11])
    position = np.arange(12)
    rho = {
        pair: stats.spearmanr(*pair_values).statistic
        for pair, pair_values in {
            "ap": (axis_rank, position),
            "af": (axis_rank, frequency_rank),
            "fp": (frequency_rank, position),
        }.items()
    }
    assert rho["ap"] == pytest.approx(rho["af"] * rho["fp"], abs=1e-12)
    M = planted_line(axis_rank.astype(float))
    frequencies = 10.0 ** (frequency_rank / 2)  # any increasing function: only ranks count
    order = order_test(M, MONTHS, "linear", frequencies=frequencies)
    assert abs(order.spearman) == pytest.approx(rho["ap"])
    assert order.spearman_p < 0.01
    assert order.partial_spearman == pytest.approx(0.0, abs=1e-9)
    assert order.partial_spearman_p == 1.0
    # frequency equal to the position explains it entirely: no partial order to test
    same = order_test(M, MONTHS, "linear", frequencies=position.astype(float))
    assert np.isnan(same.partial_spearman) and np.isnan(same.partial_spearman_p)


def residual_ranks(values: np.ndarray, covariates: list[np.ndarray]) -> np.ndarray:
    """Least-squares residuals of ``values``' ranks on an intercept and covariate ranks."""
    Z = np.column_stack([np.ones(len(values)), *(stats.rankdata(c) for c in covariates)])
    ranks = stats.rankdata(values)
    return ranks - Z @ np.linalg.lstsq(Z, ranks, rcond=None)[0]


@pytest.mark.parametrize("given", ["norms", "frequencies", "both"])
def test_spearman_and_partial_spearman_match_scipy(given):
    rng = np.random.default_rng(5)
    M = rng.normal(size=(12, D_MODEL))
    norms = np.linalg.norm(M, axis=1)
    frequencies = np.round(rng.uniform(0, 4, 12))  # ties: average ranks
    covariates = {
        "norms": {"norms": norms},
        "frequencies": {"frequencies": frequencies},
        "both": {"norms": norms, "frequencies": frequencies},
    }[given]
    order = order_test(M, MONTHS, "linear", n_permutations=500, **covariates)
    axis = (M - M.mean(axis=0)) @ decompose(M, center=True).Vt[0]
    np.testing.assert_allclose(order.coordinates[:, 0], axis, rtol=1e-12)
    position = np.arange(12)
    assert order.spearman == pytest.approx(stats.spearmanr(axis, position).statistic, rel=1e-12)
    expected = stats.pearsonr(
        residual_ranks(axis, list(covariates.values())),
        residual_ranks(position, list(covariates.values())),
    ).statistic
    assert order.partial_spearman == pytest.approx(expected, rel=1e-10)
    assert 1 / 501 <= order.partial_spearman_p <= 1.0


def test_coordinates_ignore_the_offset_and_monte_carlo_follows_rng():
    M = planted_circle(12, noise=0.4, seed=2)
    order = order_test(M, MONTHS, "cyclic")
    shifted = order_test(M + 50.0, MONTHS, "cyclic")  # centered whatever the run's centering
    np.testing.assert_allclose(shifted.coordinates, order.coordinates, atol=1e-9)
    seeded = order_test(M, MONTHS, "cyclic", rng=np.random.default_rng(0))
    assert seeded.circular_corr_p == order.circular_corr_p  # rng=None is default_rng(0)
    other = order_test(M, MONTHS, "cyclic", n_permutations=2000, rng=np.random.default_rng(9))
    assert other.n_permutations == 2000
    assert other.neighbours_p != order.neighbours_p  # other draws, close estimates
    assert other.neighbours_p == pytest.approx(order.neighbours_p, abs=0.03)
    assert other.circular_corr_p == pytest.approx(order.circular_corr_p, abs=0.03)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"kind": "ordinal"}, r"kind: expected 'linear' or 'cyclic', got 'ordinal'"),
        ({"M": np.zeros((2, 4)), "words": ["a", "b"]}, r"M: .*at least 3 members.*got 2"),
        ({"M": np.zeros(5)}, r"M: expected an \(n, d_model\) array.*got shape \(5,\)"),
        ({"words": ["a", "b"]}, r"words: expected one word per row of M \(5\), got 2"),
        ({"norms": np.ones(4)}, r"norms: expected one value per row of M, shape \(5,\), got"),
        ({"frequencies": np.ones(6)}, r"frequencies: expected one value .* \(5,\), got \(6,\)"),
        ({"n_permutations": 0}, r"n_permutations: expected at least 1, got 0"),
    ],
)
def test_bad_arguments_are_refused(arguments, match):
    given = {"M": np.random.default_rng(0).normal(size=(5, 4)), "words": list("abcde")}
    given |= {"kind": "linear"} | arguments
    with pytest.raises(ValueError, match=match):
        order_test(given.pop("M"), given.pop("words"), given.pop("kind"), **given)


def test_fisher_lee_refuses_angles_of_another_length():
    with pytest.raises(ValueError, match=r"b: expected last axis of length 3, got shape \(4,\)"):
        fisher_lee(np.zeros(3), np.zeros(4))


def test_order_figure_labels_every_member_and_titles_the_statistic():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embsvd.figures.run_figures import order_figure

    fig = order_figure(order_test(planted_circle(12), MONTHS, "cyclic"), plt)
    ax = fig.axes[0]
    assert [text.get_text().strip() for text in ax.texts] == list(MONTHS)
    assert "neighbours 12/12" in ax.get_title()
    assert tuple(fig.get_size_inches()) == pytest.approx((3.4, 3.4))
    assert len(ax.lines[0].get_xdata()) == 13  # closed: back to jan
    plt.close(fig)
    line = order_figure(order_test(planted_line(np.arange(10.0)), MONTHS[:10], "linear"), plt)
    assert line.axes[0].get_title().startswith("Spearman")
    assert len(line.axes[0].lines[0].get_xdata()) == 10  # open
    plt.close(line)
