"""Number structure: Fourier power shares of the integer tokens' rows over their order,
the order-permutation and frequency-only nulls, the contiguous-run rule, the config's
ranges and a tracked run that logs the check."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from embsvd.checks.numbers import (
    frequency_fit,
    integer_run,
    number_structure,
    power_shares,
    usable_length,
)
from embsvd.groups import KeptToken, TokenForms
from embsvd.io.checkpoint import load_checkpoint
from embsvd.pipeline import run_job
from embsvd.pipeline.config import checked_settings, config_hash
from tests.conftest import write_tiny_bert
from tests.test_config import compose_config
from tests.test_pipeline import artifact_names, job_config, runs_of
from tests.test_tracking import read_artifact

PERIODS = (2, 5, 10)


def planted(n: int = 100, d: int = 16, period: int = 10, noise: float = 0.5, seed: int = 1):
    """Rows ``cos(2 pi n / period) u + noise``: a periodic signal along a direction ``u``."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    order = np.arange(n)
    return np.cos(2 * np.pi * order / period)[:, None] * u + noise * rng.normal(size=(n, d))


# --- the spectrum -----------------------------------------------------------------------------


def test_phi_equals_a_direct_fft_computation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 7)) + 3.0  # an offset: the mean is removed, not counted
    structure = number_structure(X, rng.normal(size=40), PERIODS, n_null=9, random_state=0)
    F = np.fft.fft(X - X.mean(axis=0), axis=0)
    power = (np.abs(F) ** 2).sum(axis=1)  # summed over dimensions, k = 0 .. N-1
    total = power[1:].sum()
    # Parseval: the non-constant power is N times the rows' squared deviations
    np.testing.assert_allclose(total, 40 * ((X - X.mean(axis=0)) ** 2).sum(), rtol=1e-12)
    for period in PERIODS:
        k = 40 // period
        mirrored = power[k] + (power[40 - k] if k != 20 else 0.0)  # k = N/2 counts once
        np.testing.assert_allclose(structure.phi(period), mirrored / total, rtol=1e-12)
    assert structure.share.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(structure.share) == 20 and structure.spectrum_periods[0] == 40.0


def test_power_shares_of_a_batch_equal_each_sequence_alone():
    X = np.random.default_rng(3).normal(size=(4, 30, 5))
    batch = power_shares(X)
    for i in range(4):
        np.testing.assert_allclose(batch[i], power_shares(X[i]), rtol=1e-12)
    assert np.isnan(power_shares(np.ones((10, 3)))).all()  # no power to share


def test_the_sequence_is_cut_to_a_multiple_of_the_periods_lcm():
    assert usable_length(342, PERIODS) == 340
    assert usable_length(10, PERIODS) == 10
    assert usable_length(9, PERIODS) == 0
    assert usable_length(7, (2, 3)) == 6
    X = planted(n=47)
    structure = number_structure(X, np.zeros(47), PERIODS, n_null=9, random_state=0, n_run=47)
    assert (structure.n_run, structure.n_used, len(structure.share)) == (47, 40, 20)
    np.testing.assert_allclose(structure.share, power_shares(X[:40]), rtol=1e-12)
    with pytest.raises(ValueError, match=r"9 integers in a row, fewer than lcm\(periods\) = 10"):
        number_structure(X[:9], np.zeros(9), PERIODS, n_null=9)
    with pytest.raises(ValueError, match="log_frequency: 5 values for 47 rows"):
        number_structure(X, np.zeros(5), PERIODS, n_null=9)


# --- the nulls --------------------------------------------------------------------------------


def test_a_planted_period_10_signal_is_found_at_period_10_only():
    structure = number_structure(planted(), np.zeros(100), PERIODS, n_null=500, random_state=0)
    i = structure.index(10)
    assert structure.phi(10) > 0.3 > structure.perm.q95[i]
    assert structure.perm.p_value[i] == pytest.approx(1 / 501)
    # frequency explains nothing here (all equal): the frequency null is the order's
    assert structure.freq.p_value[i] == pytest.approx(1 / 501)
    assert structure.frequency_r2 == pytest.approx(0.0, abs=1e-12)
    for period in (2, 5):
        assert structure.perm.p_value[structure.index(period)] > 0.05


def test_random_rows_give_uniform_p_values():
    rng = np.random.default_rng(7)
    p_perm, p_freq = [], []
    for seed in range(80):
        X = rng.normal(size=(20, 4))
        structure = number_structure(X, rng.normal(size=20), PERIODS, n_null=99, random_state=seed)
        p_perm += [structure.perm.p_value[structure.index(t)] for t in PERIODS]
        p_freq += [structure.freq.p_value[structure.index(10)]]
    # 240 p-values of 3 periods: uniform on the grid 1/100 .. 1
    assert stats.kstest(p_perm, "uniform").pvalue > 0.01
    assert stats.kstest(p_freq, "uniform").pvalue > 0.01
    assert np.mean(np.array(p_perm) <= 0.05) < 0.1


def test_the_frequency_null_absorbs_a_signal_of_frequency_alone():
    """Round numbers are frequent: a row that is a function of its token's frequency has
    period-10 power that the order null calls significant and the frequency null does not."""
    rng = np.random.default_rng(5)
    n = np.arange(100)
    periodic = 1.5 * (n % 10 == 0) + 0.5 * np.cos(2 * np.pi * n / 10)
    zipf = 4.0 + periodic + 0.05 * rng.normal(size=100)
    u = rng.normal(size=12)
    X = zipf[:, None] * u + 0.3 * rng.normal(size=(100, 12))
    structure = number_structure(X, zipf, PERIODS, n_null=500, random_state=0)
    i = structure.index(10)
    assert structure.perm.p_value[i] < 0.01 < 0.05 < structure.freq.p_value[i]
    assert structure.zipf_share[i] > structure.perm.q95[i]  # frequency itself is periodic
    assert structure.frequency_r2 > 0.8
    # a periodic signal that frequency does not explain stays significant under it
    mixed = X + 3 * np.cos(2 * np.pi * n / 10)[:, None] * rng.normal(size=12)
    beyond = number_structure(mixed, zipf, PERIODS, n_null=500, random_state=0)
    assert beyond.freq.p_value[i] < 0.01


def test_the_frequency_fit_is_least_squares_on_a_quadratic_of_log_frequency():
    rng = np.random.default_rng(2)
    zipf = rng.normal(size=30)
    X = rng.normal(size=(30, 4))
    fitted, residual = frequency_fit(X, zipf)
    basis = np.column_stack([np.ones(30), zipf, zipf**2])  # unstandardised: the same span
    expected = basis @ np.linalg.lstsq(basis, X, rcond=None)[0]
    np.testing.assert_allclose(fitted, expected, atol=1e-10)
    np.testing.assert_allclose(fitted + residual, X, atol=1e-12)
    constant, _ = frequency_fit(X, np.full(30, 3.0))  # one frequency: the mean alone
    np.testing.assert_allclose(constant, np.tile(X.mean(axis=0), (30, 1)), atol=1e-12)


def test_the_nulls_are_seeded_and_independent_of_each_other():
    X, zipf = planted(), np.linspace(3, 5, 100)
    first = number_structure(X, zipf, PERIODS, n_null=50, random_state=3)
    again = number_structure(X, zipf, PERIODS, n_null=50, random_state=3)
    other = number_structure(X, zipf, PERIODS, n_null=50, random_state=4)
    np.testing.assert_array_equal(first.perm.mean, again.perm.mean)
    np.testing.assert_array_equal(first.freq.q95, again.freq.q95)
    assert not np.array_equal(first.perm.mean, other.perm.mean)


# --- the integers a tokenizer keeps whole -----------------------------------------------------


@pytest.fixture(scope="module")
def minilm_forms() -> TokenForms:
    settings = OmegaConf.to_object(compose_config())
    return TokenForms(load_checkpoint(settings.model).tokenizer)


def test_the_contiguous_run_on_the_bundled_minilm_tokenizer(minilm_forms):
    run = integer_run(minilm_forms, "bare", 999)
    assert len(run) == 342  # 0 .. 341 are whole; 342 is '34', '##2'
    assert [m.word for m in run] == [str(n) for n in range(342)]
    assert all(isinstance(m, KeptToken) and m.token == m.word for m in run)
    assert len({m.token_id for m in run}) == 342
    assert minilm_forms.find("342", "bare").tokens == ("34", "##2")
    # WordPiece has no word-initial form: every form gives the same run
    assert integer_run(minilm_forms, "auto", 999) == run
    assert integer_run(minilm_forms, "bare", 20) == run[:21]  # 0..max_value, inclusive


@pytest.mark.slow
def test_smollm2_splits_numbers_into_digits(smollm2):
    forms = TokenForms(smollm2.tokenizer)
    assert [m.token for m in integer_run(forms, "bare", 999)] == [str(n) for n in range(10)]
    assert integer_run(forms, "initial", 999) == ()  # no 'Ġ0': the space is its own token
    assert len(integer_run(forms, "auto", 999)) == 10


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("numbers.max_value=0", r"numbers.max_value: .* between 1 and 100000; got 0"),
        ("numbers.max_value=200000", r"numbers.max_value: .*got 200000"),
        ("numbers.periods=[1,10]", r"numbers.periods: \[1, 10\] must be distinct periods of"),
        ("numbers.periods=[5,5]", r"numbers.periods: \[5, 5\] must be distinct"),
        ("numbers.periods=[]", r"numbers.periods: \[\] must be distinct"),
        (
            "numbers.periods=[7,10]",
            r"need at least lcm = 70 integers .*max_value=20 tries 21; raise .* to 69",
        ),
        ("numbers.n_null=1", r"numbers.n_null: draws of each null, between 2 and .*got 1"),
    ],
)
def test_numbers_settings_out_of_range_are_refused(override, message):
    overrides = [override] if "max_value" in override else [override, "numbers.max_value=20"]
    with pytest.raises(ValueError, match=message):
        checked_settings(compose_config(*overrides))


def test_a_form_that_is_not_one_fails_at_composition():
    with pytest.raises(Exception, match="numbers.form"):
        compose_config("numbers.form=first")


def test_numbers_enter_the_config_hash_only_when_enabled():
    plain = checked_settings(compose_config())
    off = checked_settings(compose_config("numbers.n_null=50"))
    on = checked_settings(compose_config("numbers.enabled=true"))
    on_fewer = checked_settings(compose_config("numbers.enabled=true", "numbers.n_null=50"))
    assert config_hash(plain) == config_hash(off)  # runs without it keep their hashes
    assert len({config_hash(plain), config_hash(on), config_hash(on_fewer)}) == 3


# --- a tracked run ----------------------------------------------------------------------------


def test_a_run_with_numbers_enabled_logs_metrics_tables_and_figure(
    tmp_path, migrated_store_file, caplog
):
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_tiny_bert(tmp_path / "tiny-bert")  # digits 0..9 are its only numbers
    numbers = ["numbers.enabled=true", "numbers.n_null=49", "numbers.max_value=30"]
    run_job(job_config(tmp_path / "tiny-bert", uri, "numbers", "analysis=fast", *numbers))
    # periods whose lcm (30) exceeds the 10 integers: the run says so and tests nothing
    short = [*numbers, "numbers.periods=[2,3,5]"]
    run_job(job_config(tmp_path / "tiny-bert", uri, "numbers", "analysis=fast", *short))
    # 0..9 hold one cycle of period 10: its share is a trend, and the run says so
    assert "periods [10] span fewer than two cycles" in caplog.text
    assert "fewer than the lcm(periods) = 30" in caplog.text
    client, [run, untested] = runs_of(uri, "numbers")
    assert run.info.status == untested.info.status == "FINISHED"
    metrics = run.data.metrics
    assert (metrics["numbers/n_run"], metrics["numbers/n_used"]) == (10, 10)
    for period in PERIODS:
        for name in ("phi", "zipf_phi", "perm_mean", "perm_q95", "perm_p", "perm_p_holm"):
            assert f"numbers/T{period}/{name}" in metrics
        assert 1 / 50 <= metrics[f"numbers/T{period}/freq_p"] <= 1
    spectrum = list(
        csv.DictReader(io.StringIO(read_artifact(client, run.info.run_id, "numbers_spectrum.csv")))
    )
    assert [int(row["k"]) for row in spectrum] == [1, 2, 3, 4, 5]
    assert [row["tested"] for row in spectrum] == ["true", "true", "false", "false", "true"]
    assert float(spectrum[0]["share"]) == metrics["numbers/T10/phi"]
    assert sum(float(row["share"]) for row in spectrum) == pytest.approx(1.0)
    members = list(
        csv.DictReader(io.StringIO(read_artifact(client, run.info.run_id, "numbers_members.csv")))
    )
    assert [row["token"] for row in members] == [str(n) for n in range(10)]
    assert "numbers_spectrum.png" in artifact_names(client, run.info.run_id, "figures")
    assert untested.data.metrics["numbers/n_used"] == 0
    assert not any(key.startswith("numbers/T") for key in untested.data.metrics)
    assert "numbers_spectrum.csv" not in artifact_names(client, untested.info.run_id)


def test_a_run_without_numbers_logs_none(tmp_path, migrated_store_file):
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_tiny_bert(tmp_path / "tiny-bert")
    run_job(job_config(tmp_path / "tiny-bert", uri, "plain", "analysis=fast"))
    client, [run] = runs_of(uri, "plain")
    assert not any(key.startswith("numbers/") for key in run.data.metrics)
    assert not any(name.startswith("numbers") for name in artifact_names(client, run.info.run_id))
