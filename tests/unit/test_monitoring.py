"""Quality checks and drift verdict logic on real and generated data (no registry)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from churn_platform import data
from churn_platform.errors import SettingsError
from churn_platform.settings import Settings, load_settings
from monitoring import drift, quality


def failures(findings) -> dict[str, str]:
    return {f.check: f.detail for f in findings if f.failure}


def test_clean_current_data_passes_and_ids_are_not_features(telco_csv):
    raw = pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(100)
    frame, findings = quality.check(raw, 0.05)
    assert failures(findings) == {}
    assert "customer_id" not in frame.columns and len(frame) == 100


def test_quality_failures_name_the_column_and_problem(telco_csv):
    raw = pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(100)
    broken = raw.drop(columns=["contract"]).assign(
        tenure=["abc"] * 3 + list(raw.tenure[3:]), paymentmethod=["Bitcoin"] + list(raw.paymentmethod[1:]),
        streamingtv="", surprise="x",
    )  # fmt: skip
    _, findings = quality.check(broken, 0.05)
    found = failures(findings)
    assert "['contract']" in found["missing_columns"]
    assert "'tenure' should be numeric; 3 values are not, e.g. ['abc']" in found["type_change"]
    assert "unknown categories ['Bitcoin']" in found["unknown_categories"]
    assert "'streaming_tv' has no values" in found["empty_column"]
    notes = {f.check: f.detail for f in findings if not f.failure}
    assert "['surprise']" in notes["extra_columns"]
    _, ranged = quality.check(raw.assign(tenure=["-3"] + list(raw.tenure[1:]), monthlycharges="inf"), 0.05)
    found = {f.column: f.detail for f in ranged if f.check == "out_of_range" and f.failure}
    assert "1 values outside the schema's range (from 0 to 2147483647, whole numbers), e.g. ['-3']" in found["tenure"]
    assert "100 values outside the schema's range (from 0 to 1000000000000), e.g. ['inf']" in found["monthly_charges"]
    # What training and serving refuse: a flag of 2 or -1, a fractional tenure.
    odd = raw.assign(seniorcitizen=["2", "-1"] + list(raw.seniorcitizen[2:]), tenure=["12.5"] + list(raw.tenure[1:]))
    _, ranged = quality.check(odd, 0.05)
    _, infinite = quality.check(raw.assign(seniorcitizen=["inf"] + list(raw.seniorcitizen[1:])), 0.05)
    assert "one of [0, 1]" in failures(infinite)["out_of_range"]  # a finding, not an OverflowError
    found = {f.column: f.detail for f in ranged if f.check == "out_of_range" and f.failure}
    assert "2 values outside the schema's range (one of [0, 1]), e.g. ['2', '-1']" in found["senior_citizen"]
    assert "1 values outside the schema's range (from 0 to 2147483647, whole numbers), e.g. ['12.5']" in found["tenure"]


def test_missing_share_above_the_limit_fails_below_it_drops_rows(telco_csv):
    raw = pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(100)
    some = raw.assign(gender=[""] * 3 + list(raw.gender[3:]))
    frame, findings = quality.check(some, 0.05)
    assert failures(findings) == {} and len(frame) == 97
    _, findings = quality.check(some, 0.02)
    assert "3.0% missing values (limit 2.0%)" in failures(findings)["missing_values"]


def test_threshold_and_column_settings_are_parsed_once_and_checked(monkeypatch):
    # The prediction's own too: its drift alone is a drift verdict (refused as an unknown column before).
    monkeypatch.setenv("CHURN_MONITOR_COLUMN_THRESHOLDS", "tenure=0.05, contract=0.2, churn_probability=0.3")
    monkeypatch.setenv("CHURN_MONITOR_CRITICAL_COLUMNS", " tenure ,contract,")
    monkeypatch.setenv("CHURN_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = load_settings()
    assert settings.monitor_column_thresholds == {"tenure": 0.05, "contract": 0.2, "churn_probability": 0.3}
    assert settings.monitor_critical_columns == ["tenure", "contract"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    for variable, value, problem in [
        ("CHURN_MONITOR_COLUMN_THRESHOLDS", "tenur=0.05", "unknown columns ['tenur']"),
        ("CHURN_MONITOR_COLUMN_THRESHOLDS", "tenure=high", "'tenure=high': 'high' is not a number"),
        ("CHURN_MONITOR_COLUMN_THRESHOLDS", "tenure", "'tenure' is not column=number"),
        ("CHURN_MONITOR_COLUMN_THRESHOLDS", "tenure=0", "thresholds must be numbers above 0"),
        # Jensen-Shannon tops at 0.8326: a contract that moved wholly to "Two year" scored 0.614 and
        # passed at 0.9, the critical column's check silently off.
        ("CHURN_MONITOR_COLUMN_THRESHOLDS", "contract=0.9", "is at most 0.8326, so that threshold never flags it"),
        ("CHURN_MONITOR_COLUMN_THRESHOLD", "0.85", "0.85 applies to the category columns too"),
        ("CHURN_MONITOR_CRITICAL_COLUMNS", "tenure,planet", "unknown columns ['planet']"),
        ("CHURN_MONITOR_CRITICAL_COLUMNS", "churn_probability", "unknown columns ['churn_probability']"),
    ]:
        with monkeypatch.context() as patch:
            patch.setenv(variable, value)
            with pytest.raises(SettingsError, match=f"{variable}: .*{problem}".replace("[", r"\[").replace("(", r"\(")):
                load_settings()


def _verdict(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[list[str], float]:
    settings = Settings()
    ref, _ = quality.check(reference, 1)
    cur, _ = quality.check(current, 1)
    columns = drift.compute(ref, cur, {}, settings.monitor_column_threshold, set()).columns
    drifted = [c.column for c in columns if c.drifted]
    return drifted, len(drifted) / len(columns)


def test_a_fresh_sample_of_the_same_real_customers_is_quiet(telco_csv):
    train, valid = data.split(data.load(telco_csv), 0.25, seed=7)
    drifted, share = _verdict(train, valid)
    assert drifted == [] and share < Settings().monitor_drift_share


def test_the_default_share_catches_a_shift_of_four_features():
    drifted, share = _verdict(data.generate(5000, seed=1), data.generate(5000, seed=2, drift=True))
    assert set(drifted) == {"tenure", "contract", "monthly_charges", "total_charges"}
    assert share >= Settings().monitor_drift_share > 3 / 19 - 0.01


def test_alert_webhook_gets_the_summary_and_a_dead_one_changes_nothing(caplog, webhook):
    from monitoring.runs import send_alert
    from tests.services import free_port

    hook, received = webhook
    send_alert(hook, {"verdict": "drift", "drift_share": 0.21})
    assert received == [{"verdict": "drift", "drift_share": 0.21}]
    send_alert(f"http://127.0.0.1:{free_port()}/hook", {"verdict": "drift"})  # nobody listens: logged, no raise
    assert "alert to" in caplog.text and "failed" in caplog.text


def test_a_webhook_httpx_cannot_even_try_is_logged_and_the_verdict_stands(caplog, monkeypatch):
    """A host httpx cannot encode, or a proxy it cannot use, raised past the alert: a drift
    verdict (exit 1) became exit 70, and the drift gauges were never pushed."""
    from monitoring.runs import send_alert

    send_alert("http://hooks..example.com/T0/B0/s3cret", {"verdict": "drift"})  # UnicodeError in httpx
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy:1080")  # ImportError: no socksio
    send_alert("https://hooks.example.com/T0/B0/s3cret", {"verdict": "drift"})
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failed == ["alert to hooks..example.com failed: UnicodeError",
                      "alert to hooks.example.com failed: ImportError"]  # fmt: skip
    assert "s3cret" not in caplog.text


def test_a_new_customers_blank_total_charges_is_zero_as_in_training(telco_csv):
    """The IBM export leaves TotalCharges blank in a customer's first month; training reads it
    as 0.0, and the monitor called 10 % of new customers missing values and stopped (exit 4)."""
    raw = pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(100)
    new = raw.assign(tenure=["0"] * 10 + list(raw.tenure[10:]), totalcharges=[" "] * 10 + list(raw.totalcharges[10:]))
    frame, findings = quality.check(new, 0.05)
    assert failures(findings) == {} and len(frame) == 100
    assert frame["total_charges"].head(10).tolist() == [0.0] * 10
    # A blank total with months behind it is still missing.
    old = new.assign(tenure=["5"] * 10 + list(raw.tenure[10:]))
    assert "10.0% missing values (limit 5.0%)" in failures(quality.check(old, 0.05)[1])["missing_values"]


def test_rows_dropped_across_columns_count_against_the_limit(telco_csv):
    """Three columns each 3 % blank, on different rows: each under a 5 % limit, 9 % of the
    window gone, silently."""
    raw = pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(100)
    holes = raw.assign(gender=[""] * 3 + list(raw.gender[3:]),
                       partner=list(raw.partner[:3]) + [""] * 3 + list(raw.partner[6:]),
                       contract=list(raw.contract[:6]) + [""] * 3 + list(raw.contract[9:]))  # fmt: skip
    _, findings = quality.check(holes, 0.05)
    assert failures(findings) == {"missing_values": "9.0% of rows miss a value in some column (limit 5.0%): what is "
                                                    "left may not be the population"}  # fmt: skip
    frame, findings = quality.check(holes, 0.10)
    assert failures(findings) == {} and len(frame) == 91


def test_a_files_own_scores_must_be_probabilities(telco_csv):
    """Scores written as percentages were compared with the training scores as drift (109.1)."""
    raw = pd.read_csv(telco_csv, dtype=str, keep_default_na=False).head(100).assign(churn_probability="0.5")
    percent = raw.assign(churn_probability=["73.2"] * 100)
    found = failures(quality.check(percent, 0.05)[1])
    assert found == {"out_of_range": "column 'churn_probability': 100 values are not probabilities from 0 to 1, "
                                     "e.g. ['73.2']"}  # fmt: skip
    some = raw.assign(churn_probability=[""] * 2 + ["0.5"] * 98)
    frame, findings = quality.check(some, 0.05)
    assert failures(findings) == {} and len(frame) == 98
    assert "2.0% missing values, rows dropped" in {f.column: f.detail for f in findings}["churn_probability"]
    many = raw.assign(churn_probability=[""] * 10 + ["0.5"] * 90)
    assert "10.0% missing values (limit 5.0%)" in failures(quality.check(many, 0.05)[1])["missing_values"]


def test_a_report_folder_that_cannot_be_made_is_a_clear_error_not_a_traceback(tmp_path):
    """/proc passes every check a path can be given in advance; mkdir then fails."""
    from churn_platform.errors import DataSourceError
    from monitoring.runs import report_folder, writable_folder

    assert report_folder(tmp_path / "a" / "b").is_dir()
    assert writable_folder(tmp_path / "x" / "y") is None
    (tmp_path / "file").write_text("")
    assert writable_folder(tmp_path / "file" / "y") == f"{tmp_path / 'file'} is not a folder"
    with pytest.raises(DataSourceError, match="cannot write the report into /proc/nope: .*choose another --output-dir"):
        report_folder(Path("/proc/nope"))
