"""`churn-platform score`, the local engine, on the embedded registry and real customers."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from churn_platform import data
from churn_platform.cli import main
from churn_platform.loading import load
from churn_platform.registry import connect
from churn_platform.settings import Settings
from tests.unit.conftest import registry_copy

OUTPUT_COLUMNS = ["customer_id", "churn_probability", "will_churn", "risk", "model_name", "model_version", "scored_at"]


def run(registry_uri: str, *args: str):
    return CliRunner().invoke(main, ["score", "--tracking-uri", registry_uri, "--no-progress", *args])


def test_scores_equal_the_apis_scorer_on_1000_real_customers(registry_uri, customers, tmp_path):
    source = tmp_path / "customers.parquet"
    customers.head(1000).to_parquet(source, index=False)
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 0, result.output
    assert "1000 of 1000 rows scored by churn v1" in result.stdout and "0 rejected" in result.stdout
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(scores.columns) == OUTPUT_COLUMNS
    settings = Settings(tracking_uri=registry_uri)
    served = load(connect(settings), "churn", 1, default_threshold=0.5, sample=0)
    expected = served.scorer.score(data.to_records(customers.head(1000).drop(columns=["customer_id"])))
    assert np.max(np.abs(scores["churn_probability"].to_numpy() - expected)) <= 1e-9
    assert scores["customer_id"].tolist() == customers.head(1000)["customer_id"].tolist()
    assert (scores["will_churn"] == (scores["churn_probability"] >= served.decision_threshold)).all()
    p = scores.churn_probability
    bands = np.where(p >= 0.6, "high", np.where(p >= 0.3, "medium", "low"))
    assert (scores["risk"] == bands).all()
    assert (scores["model_version"] == 1).all() and (scores["model_name"] == "churn").all()
    assert scores["scored_at"].nunique() == 1 and str(scores["scored_at"].dt.tz) == "UTC"
    assert len(pd.read_parquet(tmp_path / "scores.rejects.parquet")) == 0  # every run writes its own, empty or not
    # The same customers as text (a CSV export) take the row-by-row path: the same scores.
    customers.head(1000).to_csv(tmp_path / "customers.csv", index=False)
    result = run(registry_uri, "--input", str(tmp_path / "customers.csv"), "--output", str(tmp_path / "text.parquet"))
    assert result.exit_code == 0, result.output
    as_text = pd.read_parquet(tmp_path / "text.parquet")
    assert np.max(np.abs(as_text["churn_probability"] - scores["churn_probability"])) <= 1e-12
    assert as_text[["customer_id", "risk", "will_churn"]].equals(scores[["customer_id", "risk", "will_churn"]])


def test_corrupt_rows_go_to_the_rejects_file_and_the_rest_are_scored(registry_uri, customers, tmp_path):
    frame = pd.concat([customers] * 3, ignore_index=True).head(10_000).astype(str)  # a CSV export: all text
    frame.loc[41, "monthly_charges"] = ""
    frame.loc[5_000, "contract"] = "Three year"
    frame.loc[9_998, "tenure"] = "twelve"
    source = tmp_path / "export.csv"
    frame.to_csv(source, index=False)
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "scores.csv"), "--chunk-rows", "3000")
    assert result.exit_code == 1, result.output
    assert "9997 of 10000 rows scored" in result.stdout and "3 rejected" in result.stdout
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == 9_997
    rejects = pd.read_parquet(tmp_path / "scores.rejects.parquet")
    assert rejects["row"].tolist() == [42, 5_001, 9_999]  # 1-based data rows, across chunks
    assert rejects["reason"].tolist() == [
        "monthly_charges: missing",
        "contract: unknown category (allowed: Month-to-month, One year, Two year)",
        "tenure: not a number",
    ]
    assert rejects.loc[2, "tenure"] == "twelve" and rejects.loc[1, "customer_id"] == frame.loc[5_000, "customer_id"]


def test_a_column_of_times_is_rejected_as_times(registry_uri, customers, tmp_path):
    """A warehouse export typed `tenure` as a timestamp (a start date): every row was rejected
    as "tenure: above 2147483647", pandas' nanoseconds read as months."""
    frame = customers.head(50).copy()
    frame["tenure"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(frame["tenure"] * 30, unit="D")
    source = tmp_path / "export.parquet"
    frame.to_parquet(source, index=False)
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 2, result.output
    assert "none of the 50 rows" in result.output and "reasons: tenure: a time, not a number |" in result.output


def test_a_folder_or_glob_of_files_is_one_input_with_rows_numbered_in_order(registry_uri, customers, tmp_path):
    folder = tmp_path / ".cache" / "export"  # a dot-folder above the input is the user's business
    folder.mkdir(parents=True)
    parts = [customers.iloc[:700].copy(), customers.iloc[700:1500].copy()]
    parts[1].loc[parts[1].index[9], "gender"] = "Unknown"
    for i, part in enumerate(parts):
        part.to_parquet(folder / f"part-{i}.parquet", index=False)
    (folder / "_SUCCESS").write_text("")
    # Inside it: a killed Spark run's staging folder, Spark's own and Jupyter's leftovers.
    for hidden in (".scores.parquet.1a2b.spark/_temporary/0", "_temporary/0", ".ipynb_checkpoints"):
        (folder / hidden).mkdir(parents=True)
        parts[0].to_parquet(folder / hidden / "part-0.parquet", index=False)
    for source in (str(folder), str(folder / "part-*.parquet")):
        out = tmp_path / "scores.parquet"
        result = run(registry_uri, "--input", source, "--output", str(out), "--json")
        assert result.exit_code == 1, result.output
        summary = json.loads(result.stdout)
        assert (summary["rows"], summary["scored"], summary["rejected"]) == (1500, 1499, 1)
        assert pd.read_parquet(summary["rejects"])["row"].tolist() == [710]


def test_explain_adds_the_top_contributions_as_columns(registry_uri, customers, tmp_path):
    source = tmp_path / "customers.parquet"
    customers.head(300).to_parquet(source, index=False)
    out = tmp_path / "scores.parquet"
    result = run(registry_uri, "--input", str(source), "--output", str(out), "--explain", "--top-k", "19")
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out)
    contributions = scores[[f"explanation_{i}_contribution" for i in range(1, 20)]].to_numpy()
    logit = np.log(scores.churn_probability / (1 - scores.churn_probability))
    assert np.max(np.abs(scores.explanation_base + contributions.sum(axis=1) - logit)) <= 1e-6
    assert set(scores["explanation_1_feature"]) <= set(data.FEATURE_NAMES)
    first = scores.iloc[0]
    assert first["explanation_1_value"] == str(customers.iloc[0][first["explanation_1_feature"]])


def test_the_jobs_own_files_in_the_input_folder_are_not_read_back(registry_uri, customers, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    customers.head(400).to_parquet(folder / "customers.parquet", index=False)
    for _ in range(2):
        result = run(registry_uri, "--input", str(folder), "--output", str(folder / "scores.parquet"),
                     "--with-features", "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["rows"] == 400
    # An earlier run's outputs under other names (a dated scores file with features, its rejects)
    # are not customers either: they were read back and their customers scored twice, exit 0.
    (folder / "scores.parquet").rename(folder / "scores-2026-11-01.parquet")
    customers.head(3).assign(row=1, reason="tenure: negative").to_parquet(folder / "old-rejects.parquet")
    result = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "again.parquet"), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"] == 400, result.output
    # Named by itself, a scores file with features is read (re-scored by another version, say).
    result = run(registry_uri, "--input", str(folder / "scores-2026-11-01.parquet"), "--output",
                 str(tmp_path / "rescored.parquet"), "--json")  # fmt: skip
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"] == 400, result.output
    # CSV exports beside last month's Parquet scores: the scores are left out, not "a mix" (was exit 2).
    csv_folder = tmp_path / "csv-exports"
    csv_folder.mkdir()
    customers.head(300).to_csv(csv_folder / "customers.csv", index=False)
    (folder / "scores-2026-11-01.parquet").rename(csv_folder / "scores-2026-11-01.parquet")
    result = run(registry_uri, "--input", str(csv_folder), "--output", str(tmp_path / "csv.parquet"), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"] == 300, result.output
    customers.head(5).to_parquet(csv_folder / "more-customers.parquet", index=False)  # a real mix still is one
    mixed = run(registry_uri, "--input", str(csv_folder), "--output", str(tmp_path / "mix.parquet"))
    assert mixed.exit_code == 2 and "mixes CSV and Parquet files" in mixed.output, mixed.output
    (folder / "old-rejects.parquet").unlink()
    # A customer file named as an output is not an earlier run's: refused, and left as it was.
    before = (folder / "customers.parquet").read_bytes()
    for option in ("--rejects", "--output"):
        args = {"--output": str(folder / "scores.parquet"), option: str(folder / "customers.parquet")}
        refused = run(registry_uri, "--input", str(folder), *(a for pair in args.items() for a in pair))
        assert refused.exit_code == 2, refused.output
        assert f"{option} {folder / 'customers.parquet'} is a file of the input" in refused.output
        assert (folder / "customers.parquet").read_bytes() == before


def test_integer_ids_stay_whole_numbers_on_either_path(registry_uri, customers, tmp_path):
    frame = customers.head(50).reset_index(drop=True)
    frame["customer_id"] = pd.array([2**53 + 1 + i for i in range(50)], dtype="Int64")
    frame.loc[7, "customer_id"] = None
    frame.loc[9, "tenure"] = -1  # a bad row: this chunk takes the row-by-row path, through pandas
    frame.to_parquet(tmp_path / "ids.parquet", index=False)
    result = run(registry_uri, "--input", str(tmp_path / "ids.parquet"), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 1, result.output
    ids = pd.read_parquet(tmp_path / "s.parquet")["customer_id"]
    assert ids[0] == str(2**53 + 1) and not ids.str.contains(".", regex=False).any()
    assert len(ids) == 48 and ids.notna().all()  # the gap (no id) and the bad tenure are rejects


def test_chunk_rows_bounds_a_csv_chunk_below_one_read_block(customers, tmp_path):
    """A CSV is read in 8 MiB blocks (tens of thousands of rows): chunks only ever grew, so
    --chunk-rows 1000, to bound an explained batch's memory, still scored 60,000 rows at once."""
    import pyarrow.fs as pafs

    from churn_platform.batch_scoring import _chunks

    frame = pd.concat([customers] * 16, ignore_index=True)
    frame["customer_id"] = [f"c{i}" for i in range(len(frame))]
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    chunks = list(_chunks(pafs.LocalFileSystem(), str(path), "csv", list(frame.columns), 1000))
    assert [c.num_rows for c in chunks] == [1000] * 62 + [880]  # full chunks: a block's rest waits for the next
    assert [i for c in chunks for i in c.column("customer_id").to_pylist()] == frame["customer_id"].tolist()


def test_a_folder_says_which_files_it_does_not_read(registry_uri, customers, tmp_path, caplog):
    """A compressed month beside a plain one was skipped without a word, and the job exited 0."""
    import gzip

    folder = tmp_path / "exports"
    folder.mkdir()
    customers.head(20).to_csv(folder / "2026-10.csv", index=False)
    (folder / "2026-11.csv.gz").write_bytes(gzip.compress(customers.iloc[20:40].to_csv(index=False).encode()))
    with caplog.at_level("WARNING", logger="churn_platform.batch_scoring"):
        result = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 0, result.output
    assert "not reading 1 file(s)" in caplog.text and "2026-11.csv.gz" in caplog.text
    assert "decompress them first" in caplog.text
    # Named by itself it was "no CSV or Parquet files in 2026-11.csv.gz", without the hint.
    named = run(registry_uri, "--input", str(folder / "2026-11.csv.gz"), "--output", str(tmp_path / "t.parquet"))
    assert named.exit_code == 2 and "2026-11.csv.gz is neither .csv nor .parquet" in named.output, named.output
    assert "decompress it" in named.output


def test_the_challenger_the_mlflow_ui_saved_is_the_one_scored(registry_uri, customers, tmp_path):
    """Saving an alias in the MLflow UI writes it in lower case: `status` and rollouts read
    `challenger`, while `score --alias Challenger` said no version held it (exit 2)."""
    from mlflow import MlflowClient

    source = tmp_path / "customers.parquet"
    customers.head(20).to_parquet(source, index=False)
    client = MlflowClient(registry_uri, registry_uri)
    client.set_registered_model_alias("churn", "challenger", "2")
    try:
        result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "s.parquet"),
                     "--alias", "Challenger")  # fmt: skip
    finally:
        client.delete_registered_model_alias("churn", "challenger")
    assert result.exit_code == 0, result.output
    assert "scored by churn v2" in result.output


def test_the_platform_aliases_spelled_as_the_ui_spells_them_name_them(registry_uri, customers, tmp_path):
    """`--alias production` (how the MLflow UI shows it) found no version once a command had
    given the alias its canonical spelling: exit 2."""
    source = tmp_path / "customers.parquet"
    customers.head(20).to_parquet(source, index=False)
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "s.parquet"), "--alias", "production")
    assert result.exit_code == 0, result.output
    assert "scored by churn v1" in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--input", "missing.csv"], "input not found: missing.csv"),
        (["--alias", "Production", "--version", "1"], "give --alias or --version, not both"),
        (["--version", "99"], "99"),
        (["--alias", "Nobody"], "'Nobody'"),
        (["--format", "xlsx"], "'xlsx' is not one of 'parquet', 'csv'"),
        (["--output", "s3://crm"], "--output s3://crm names a folder, not a file: add a file name (s3://crm/...)"),
        (["--output", "s3://crm/scores/"], "names a folder, not a file: add a file name (s3://crm/scores/...)"),
        (["--rejects", "s3://crm/rejects/"], "--rejects s3://crm/rejects/ names a folder, not a file"),
        # It wrote uncompressed Parquet under the name, which every reader then failed on.
        (["--output", "scores.csv.gz"], "scores.csv.gz: files are not written compressed here"),
        (["--rejects", "r.csv.gz"], "r.csv.gz: files are not written compressed here"),  # before the scores
        # Addresses pyarrow cannot take: a traceback (exit 70), or an upload failing after the scoring (exit 3).
        (["--input", "s3:///exports/"], "--input s3:///exports/ names no bucket: want s3://bucket/key"),
        (["--input", "s3://crm/exports//2026-11.csv"], "has an empty path component ('//')"),
        (["--output", "s3:///scores/latest.parquet"], "--output s3:///scores/latest.parquet names no bucket"),
    ],
)
def test_bad_usage_is_exit_2_with_one_line_and_no_output(registry_uri, customers, tmp_path, args, words, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output a regression writes stays in the test's folder
    source = tmp_path / "customers.parquet"
    customers.head(20).to_parquet(source, index=False)
    given = dict(zip(args[::2], args[1::2], strict=True))
    given.setdefault("--input", str(source))
    given.setdefault("--output", str(tmp_path / "scores.parquet"))
    result = run(registry_uri, *[x for pair in given.items() for x in pair])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "scores.parquet").exists()


def test_a_row_without_an_id_is_rejected_not_scored(registry_uri, customers, tmp_path):
    """A score without its id reaches no one: a blank id is a reject, on either path."""
    frame = customers.head(30).copy()
    frame.loc[[3, 7], "customer_id"] = ["", "  "]
    for name, save in (("typed.parquet", frame.to_parquet), ("text.csv", frame.to_csv)):
        save(tmp_path / name, index=False)
        out = tmp_path / f"{name}.scores.parquet"
        result = run(registry_uri, "--input", str(tmp_path / name), "--output", str(out))
        assert result.exit_code == 1 and "28 of 30 rows scored" in result.output, result.output
        rejects = pd.read_parquet(tmp_path / f"{name}.scores.rejects.parquet")
        assert rejects["row"].tolist() == [4, 8] and set(rejects["reason"]) == {"customer_id: empty"}
        assert pd.read_parquet(out)["customer_id"].str.strip().ne("").all()


def test_a_placeholder_for_a_missing_id_is_rejected_on_either_path(registry_uri, customers, tmp_path):
    """An export's "NULL" was scored as customer "NULL": a score that reaches no one, and in
    the outcomes an id that can only join another row missing its id."""
    from churn_platform.schema import ID_PLACEHOLDER_PROBLEM

    frame = customers.head(30).copy()
    frame.loc[[5, 9, 11], "customer_id"] = ["NULL", " n/a ", "nan"]
    rejected_on_either_path(registry_uri, frame, tmp_path, [6, 10, 12], f"customer_id: {ID_PLACEHOLDER_PROBLEM}")


def rejected_on_either_path(registry_uri, frame, tmp_path, rows: list[int], reason: str) -> list[pd.DataFrame]:
    """``frame`` scored as typed Parquet (the fast path) and as CSV text (row by row): on both,
    exactly ``rows`` (1-based) rejected for ``reason`` and the rest scored; the scores of each."""
    scores = []
    for name, save in (("typed.parquet", frame.to_parquet), ("text.csv", frame.to_csv)):  # fast and row-wise
        save(tmp_path / name, index=False)
        out = tmp_path / f"{name}.scores.parquet"
        result = run(registry_uri, "--input", str(tmp_path / name), "--output", str(out))
        scored = f"{len(frame) - len(rows)} of {len(frame)} rows scored"
        assert result.exit_code == 1 and scored in result.output, result.output
        rejects = pd.read_parquet(tmp_path / f"{name}.scores.rejects.parquet")
        assert rejects["row"].tolist() == rows, name
        assert set(rejects["reason"]) == {reason}
        scores.append(pd.read_parquet(out))
    return scores


def test_an_id_holding_any_control_character_is_rejected_on_either_path(registry_uri, customers, tmp_path):
    """DEL, the C1 controls and the Unicode line separators went unseen by the fast path's
    byte scan (below 0x20 only) and were scored under ids the API refuses; text around them
    that merely shares their lead bytes (an em dash: E2 80 94, a "¢": C2 A2) is an id."""
    from churn_platform.schema import ID_CONTROL_PROBLEM

    frame = customers.head(30).copy()
    frame.loc[[2, 4, 6, 8, 10, 12], "customer_id"] = ["a\x7fb", "a\x85b", "a\u2028b", "a\u2029b", "a—b", "a¢b"]
    reason = f"customer_id: {ID_CONTROL_PROBLEM}"
    for scores in rejected_on_either_path(registry_uri, frame, tmp_path, [3, 5, 7, 9], reason):
        assert {"a—b", "a¢b"} <= set(scores["customer_id"])


def test_a_file_that_is_not_utf8_says_so(registry_uri, customers, tmp_path):
    first = customers["customer_id"].iloc[0]
    text = customers.head(20).to_csv(index=False).replace(first, f"{first}É", 1)
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    result = run(registry_uri, "--input", str(tmp_path / "latin1.csv"), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "latin1.csv: it is not UTF-8 text (In CSV column #0:" in result.output
    assert "export it as UTF-8" in result.output
    # A column name in Latin-1, in a column never scored: a traceback (exit 70) before.
    noted = customers.head(20).assign(**{"Notiz für": "x"}).to_csv(index=False).encode("latin-1")
    (tmp_path / "header.csv").write_bytes(noted)
    result = run(registry_uri, "--input", str(tmp_path / "header.csv"), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 2 and "header.csv: its header is not UTF-8 text" in result.output, result.output


def test_a_file_named_itself_is_read_whatever_its_name(registry_uri, customers, tmp_path):
    """Names starting with _ or . are skipped inside a folder (Spark's _SUCCESS), not when named."""
    customers.head(20).to_csv(tmp_path / "_export.csv", index=False)
    result = run(registry_uri, "--input", str(tmp_path / "_export.csv"), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 20


def test_a_malformed_row_quoting_a_connection_word_is_bad_input_not_an_outage(registry_uri, customers, tmp_path):
    """The error's message quotes the row: "Disconnected" in it read as an unreachable store,
    exit 3, and the CronJob re-scored the whole input on each retry."""
    text = customers.head(5).to_csv(index=False).splitlines()
    text.append(text[1].replace(",", ",Disconnected,", 1))  # one field too many
    source = tmp_path / "timeout-connect.csv"
    source.write_text("\n".join(text) + "\n")
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 2, result.output
    assert "cannot read" in result.output and "unreachable" not in result.output


def test_a_file_that_is_not_what_it_says_and_a_folder_as_output_are_exit_2(registry_uri, customers, tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"half an upload")
    result = run(registry_uri, "--input", str(tmp_path / "broken.parquet"), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 2 and "cannot read" in result.output and "Traceback" not in result.output
    customers.head(20).to_parquet(tmp_path / "ok.parquet", index=False)
    (tmp_path / "folder").mkdir()
    result = run(registry_uri, "--input", str(tmp_path / "ok.parquet"), "--output", str(tmp_path / "folder"))
    assert result.exit_code == 2 and "is a folder" in result.output


def test_an_input_without_rows_leaves_the_previous_output(registry_uri, customers, tmp_path):
    out = tmp_path / "scores.parquet"
    customers.head(30).to_parquet(tmp_path / "some.parquet", index=False)
    assert run(registry_uri, "--input", str(tmp_path / "some.parquet"), "--output", str(out)).exit_code == 0
    customers.head(0).to_csv(tmp_path / "header-only.csv", index=False)
    result = run(registry_uri, "--input", str(tmp_path / "header-only.csv"), "--output", str(out))
    assert result.exit_code == 2 and "no rows" in result.output
    assert len(pd.read_parquet(out)) == 30


def test_an_unclosed_quote_that_swallows_records_is_refused_not_a_silent_loss(registry_uri, customers, tmp_path):
    """The parser reads a stray quote on to the next one: five customers vanished, unscored and not
    rejected, the row with the quote took a later row's values, and the summary said all scored."""
    source = tmp_path / "crm.csv"
    customers.head(10).assign(notes="ok").to_csv(source, index=False)
    lines = source.read_text().splitlines()
    lines[3] = lines[3].removesuffix(",ok") + ',"5 inch screen'  # the third customer
    lines[8] = lines[8].removesuffix(",ok") + ',10" tv'
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.parquet"
    result = run(registry_uri, "--input", str(source), "--output", str(out))
    assert result.exit_code == 2, result.output
    third = customers["customer_id"].iloc[2]
    said = f"the 'notes' value of customer_id {third!r} runs over 5 more lines, 5 of them whole records"
    assert said in result.output, result.output
    assert "an unclosed quote swallowed them" in result.output and not out.exists()
    # The same file with a lone CR ending each line (Excel's "CSV (Macintosh)"), which Arrow reads
    # too: the check looked for LF alone, and 14 of 19 customers were "all scored", exit 0.
    source.write_text("\r".join(lines) + "\r")
    result = run(registry_uri, "--input", str(source), "--output", str(out))
    assert result.exit_code == 2 and said in result.output and not out.exists(), result.output
    # A stray quote the next row's value closes swallows one record's start: that customer
    # vanished, and the row with the quote was scored with its features, exit 0.
    noted = customers.head(10)
    noted.insert(1, "notes", "ok")
    noted.to_csv(source, index=False)
    lines = source.read_text().splitlines()
    lines[3] = lines[3].replace(",ok,", ',"call back,', 1)
    lines[4] = lines[4].replace(",ok,", ',later",', 1)
    source.write_text("\n".join(lines) + "\n")
    result = run(registry_uri, "--input", str(source), "--output", str(out))
    assert result.exit_code == 2 and not out.exists(), result.output
    assert f"the 'notes' value of customer_id {third!r} runs over 1 more lines, with a record's delimiters" \
        in result.output
    # A quoted line break in a note is fine, with commas on either side too, and so is a note in
    # Latin-1 (a column never scored is not checked for UTF-8): every customer is scored.
    for at in (1, len(customers.columns)):
        noted = customers.head(10)
        noted.insert(at, "notes", "rappelé, à rappeler,\nsaid it, twice")
        source.write_bytes(noted.to_csv(index=False).encode("latin-1"))
        assert run(registry_uri, "--input", str(source), "--output", str(out)).exit_code == 0
        assert len(pd.read_parquet(out)) == 10


def test_parquet_text_that_is_not_utf8_is_a_clear_error_naming_the_column(registry_uri, customers, tmp_path):
    """Parquet writers that do not check (a Hive table of Latin-1 data) write such text: a
    category or an id in it failed deep in the scoring, exit 70 "a bug", with a traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(customers.head(20), preserve_index=False)
    latin1 = [v.encode("latin-1") for v in customers["gender"].head(20).str.replace("Female", "Femélle")]
    ids = [v.encode() for v in customers["customer_id"].head(20)]
    ids[5] = b"caf\xe9-1"
    offsets = np.cumsum([0, *map(len, ids)]).astype(np.int32)
    unchecked_ids = pa.Array.from_buffers(pa.string(), 20, [None, pa.py_buffer(offsets.tobytes()),
                                                             pa.py_buffer(b"".join(ids))])  # fmt: skip
    for column, values in (("gender", pa.array(latin1, pa.binary())), ("customer_id", unchecked_ids)):
        source = tmp_path / f"bad-{column}.parquet"
        pq.write_table(table.set_column(table.column_names.index(column), column, values), source)
        result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "scores.parquet"))
        assert result.exit_code == 2, result.output
        assert f"cannot read {source}: its {column!r} column is not UTF-8 text" in result.output


def test_a_line_of_spaces_before_the_header_is_named_before_the_model_loads(customers, tmp_path):
    """Arrow reads it as the header: "CSV parse error: Expected 1 columns, got 21", after the
    model's download, where the header check had skipped it. A registry that is down shows the
    order: the file is refused first."""
    source = tmp_path / "export.csv"
    source.write_text(" \n" + customers.head(3).to_csv(index=False))
    result = run("http://127.0.0.1:9", "--input", str(source), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 2, result.output
    assert f"{source}: a line of spaces before the header reads as the header; remove it" in result.output


def test_missing_columns_are_named(registry_uri, customers, tmp_path):
    source = tmp_path / "customers.parquet"
    customers.head(20).drop(columns=["tenure", "contract"]).to_parquet(source, index=False)
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 2 and "missing required columns ['tenure', 'contract']" in result.output


def test_every_files_header_is_checked_before_the_model_loads(customers, tmp_path):
    """A column missing from the last file of a folder ended the job after every file before it
    was scored: it is found first, before the registry is even asked (here, one that is down)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    customers.head(20).to_csv(folder / "a.csv", index=False)
    customers.head(20).drop(columns=["tenure"]).to_csv(folder / "b.csv", index=False)
    result = run("http://127.0.0.1:9", "--input", str(folder), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 2, result.output
    assert f"{folder / 'b.csv'}: missing required columns ['tenure']" in result.output
    # So is a rejects folder that does not exist: it was found after the model's download.
    customers.head(20).to_csv(folder / "b.csv", index=False)
    result = run("http://127.0.0.1:9", "--input", str(folder), "--output", str(tmp_path / "scores.parquet"),
                 "--rejects", str(tmp_path / "no-such-folder" / "r.parquet"))  # fmt: skip
    assert result.exit_code == 2 and "output folder does not exist" in result.output, result.output


def test_an_unreachable_registry_is_exit_3(customers, tmp_path):
    source = tmp_path / "customers.parquet"
    customers.head(20).to_parquet(source, index=False)
    result = run("http://127.0.0.1:9", "--input", str(source), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.output and not (tmp_path / "scores.parquet").exists()


def test_sigkill_mid_run_leaves_the_previous_output_intact(registry_uri, tmp_path):
    """The output is renamed into place only when complete: a killed job changes nothing."""
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    data.generate(50, seed=1).drop(columns=["churn"]).to_parquet(small, index=False)
    pd.concat([data.generate(20_000, seed=2).drop(columns=["churn"])] * 15).to_parquet(big, index=False)
    out = tmp_path / "scores.parquet"
    assert run(registry_uri, "--input", str(small), "--output", str(out)).exit_code == 0
    before = out.read_bytes()
    env = dict(os.environ, MLFLOW_TRACKING_URI=registry_uri)
    command = [sys.executable, "-m", "churn_platform.cli", "score", "--input", str(big), "--output", str(out),
               "--chunk-rows", "2000", "--no-progress"]  # fmt: skip
    job = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".scores.parquet.*.tmp")):  # it has started writing
        assert job.poll() is None, job.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert out.read_bytes() == before
    assert len(pd.read_parquet(out)) == 50




def test_monitor_reads_a_scores_file_written_with_features(registry_uri, customers, tmp_path, monkeypatch, setenv):
    """Prediction drift from the file's own scores when the monitored version made them;
    another version's scores are re-scored; scores without features fail the data checks (exit 4)."""
    setenv(CHURN_MONITOR_MIN_ROWS="500")  # v2 learned from 600 rows, under the default 1,000 a reference needs
    uri = registry_copy(registry_uri, tmp_path)  # the monitor records a run: keep the session's registry as it was
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "customers.parquet"
    customers.head(1000).to_parquet(source, index=False)
    scores = tmp_path / "scores.parquet"
    assert run(uri, "--input", str(source), "--output", str(scores), "--with-features").exit_code == 0
    written = pd.read_parquet(scores)
    assert list(written.columns) == OUTPUT_COLUMNS + list(data.FEATURE_NAMES)
    assert written["tenure"].tolist() == customers.head(1000)["tenure"].tolist()

    def monitor(current: Path, *extra: str) -> tuple[int, dict | str]:
        result = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--current", str(current), "--json",
                                           "--output-dir", str(tmp_path / "report"), *extra])  # fmt: skip
        return result.exit_code, json.loads(result.stdout) if result.stdout.strip().startswith("{") else result.output

    code, stored = monitor(scores)
    assert code in (0, 1) and stored["window"]["scores"] == "stored in the file"
    code, rescored = monitor(source)
    assert rescored["window"]["scores"] == "scored here by v1"
    assert stored["prediction_drift"]["score"] == pytest.approx(rescored["prediction_drift"]["score"], abs=1e-9)
    code, other = monitor(scores, "--version", "2")
    assert other["window"]["scores"] == "scored here by v2 (the file's scores are from churn v1)"
    odd = tmp_path / "odd.parquet"
    written.assign(model_version=float("inf")).to_parquet(odd, index=False)  # an OverflowError was exit 70
    code, unknown = monitor(odd)
    assert unknown["window"]["scores"] == "scored here by v1 (the file's scores are from an unknown version)"
    bare = tmp_path / "bare.parquet"
    assert run(uri, "--input", str(source), "--output", str(bare)).exit_code == 0
    code, bare_summary = monitor(bare)  # scores without features: a data-quality failure, as missing columns are
    assert code == 4 and bare_summary["verdict"] == "data_quality_failure", bare_summary
    assert "score --with-features" in bare_summary["window"]["scores"]
    assert "missing_columns" in {f["check"] for f in bare_summary["data_quality"]["findings"]}
    # One critical column drifted, below the share limit: the text output (a CronJob's log) says why.
    shifted = tmp_path / "shifted.parquet"
    customers.head(1000).assign(tenure=customers.head(1000)["tenure"] + 4).to_parquet(shifted, index=False)
    said = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--current", str(shifted),
                                     "--output-dir", str(tmp_path / "report")])  # fmt: skip
    assert said.exit_code == 1 and "drifted columns: tenure (share 0.05" in said.output, said.output
    assert "critical columns drifted: tenure (any one is drift)" in said.output


def test_monitor_checks_every_row_of_a_file_before_it_samples_one(
    registry_uri, customers, tmp_path, monkeypatch, setenv
):
    """A file over CHURN_MONITOR_MAX_ROWS was sampled first: bad rows the sample left out passed
    the data checks ("no drift", exit 0) where a smaller file failed them."""
    setenv(CHURN_MONITOR_MIN_ROWS="500", CHURN_MONITOR_MAX_ROWS="600")
    uri = registry_copy(registry_uri, tmp_path)
    monkeypatch.chdir(tmp_path)  # the monitoring experiment it makes keeps its runs in ./mlruns
    big = pd.concat([customers] * 3, ignore_index=True).head(6000)
    big.loc[2:4, "internet_service"] = "Satellite"  # three rows the seeded 600-row sample leaves out
    source = tmp_path / "big.parquet"
    big.to_parquet(source, index=False)
    result = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--current", str(source), "--json",
                                       "--output-dir", str(tmp_path / "report")])  # fmt: skip
    summary = json.loads(result.stdout)
    assert result.exit_code == 4 and summary["verdict"] == "data_quality_failure", summary
    assert summary["window"]["sampled"]["rows"] == 600 and summary["window"]["sampled"]["of"] == 6000


def test_monitor_all_versions_leaves_shadow_rows_out_and_never_judges_another_versions_scores(
    registry_uri, customers, tmp_path, monkeypatch, setenv
):
    """A shadow row repeats a customer Production answered; another version's scores say nothing
    about the monitored version's prediction drift."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from churn_platform import inference_log

    uri = registry_copy(registry_uri, tmp_path)  # the monitor records a run: keep the session's registry as it was
    monkeypatch.chdir(tmp_path)
    setenv(CHURN_MONITOR_MIN_ROWS="300")  # which rows are judged, not a verdict: small windows do
    log_url = f"sqlite:///{tmp_path}/log.db"
    engine = sa.create_engine(log_url)
    inference_log.upgrade(engine)
    at = datetime.now(UTC).replace(tzinfo=None)  # SQLite keeps UTC wall time
    records = data.to_records(customers.head(400))
    rows = [{**r, "request_id": f"r{i // 100}{suffix}", "row_index": i % 100, "scored_at": at, "model_name": "churn",
             "model_version": version, "arm": arm, "churn_probability": score}
            for version, arm, suffix, score in ((1, "production", "", 0.99), (2, "shadow", "~shadow", 0.01))
            for i, r in enumerate(records)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(inference_log.table(sa.MetaData()).insert(), rows)
    engine.dispose()

    def monitor(version: str, *source: str) -> dict:
        source = source or ("--all-versions", "--inference-log-url", log_url)
        out = str(tmp_path / f"report-{version}")
        result = CliRunner().invoke(main, ["monitor", "--tracking-uri", uri, "--version", version,
                                           *source, "--json", "--output-dir", out])  # fmt: skip
        assert result.exit_code in (0, 1), result.output
        return json.loads(result.stdout)

    first, second = monitor("1"), monitor("2")
    assert (first["current_rows"], first["window"]["scores"]) == (400, "logged")
    # The last 300 rows are Production's last 300, not the shadow rows logged after them.
    assert monitor("1", "--all-versions", "--inference-log-url", log_url, "--rows", "300")["current_rows"] == 300
    assert (second["current_rows"], second["window"]["scores"]) == (
        400, "scored here by v2 (the window holds scores by v1 too)")  # fmt: skip
    # v2's prediction drift is that of v2's own scores for these customers, not of v1's logged 0.99s.
    customers.head(400).to_parquet(tmp_path / "same.parquet", index=False)
    own = monitor("2", "--current", str(tmp_path / "same.parquet"))
    assert second["prediction_drift"]["score"] == pytest.approx(own["prediction_drift"]["score"], abs=1e-9)


def test_outputs_that_name_the_input_or_each_other_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id\nc1\n")
    (tmp_path / "scores.parquet").write_bytes(b"yesterday's scores")
    for args, message in (
        (["--output", "scores.parquet", "--rejects", "./scores.parquet"],
         "--rejects ./scores.parquet names the same file as --output"),
        (["--output", "out.parquet", "--rejects", str(customers)], "names the same file as the input"),
        (["--output", "customers.csv"], "--output customers.csv names the same file as the input"),
    ):  # fmt: skip
        result = CliRunner().invoke(main, ["score", "--input", "customers.csv", *args,
                                           "--tracking-uri", "http://127.0.0.1:9"])  # fmt: skip
        assert result.exit_code == 2 and message in result.output, result.output
    assert customers.read_text() == "customer_id\nc1\n"
    assert (tmp_path / "scores.parquet").read_bytes() == b"yesterday's scores"


def test_rejects_that_cannot_be_written_after_the_scores_say_whose_each_file_is(
    registry_uri, customers, tmp_path, setenv
):
    """The scores are committed first (rejects never beside an older run's scores); when the
    rejects then fail, the user must not take the old rejects for this run's."""
    source = tmp_path / "customers.parquet"
    customers.head(50).to_parquet(source, index=False)
    setenv(MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "scores.parquet"),
                 "--rejects", "s3://bucket/scores.rejects.parquet")  # fmt: skip
    assert result.exit_code == 3, result.output
    assert f"the scores at {tmp_path / 'scores.parquet'} are this run's, but any file at " \
           "s3://bucket/scores.rejects.parquet is an earlier run's rejects: run the job again" in result.output
    assert len(pd.read_parquet(tmp_path / "scores.parquet")) == 50


def test_rejects_that_fail_in_any_other_way_say_so_in_the_log_as_the_error_goes_on(caplog):
    """Spark's rejects job (a join and a sort) losing an executor, or a signal, ended the run with
    no word that the scores beside the old rejects are new."""
    from churn_platform.batch_scoring import rejects_after_scores

    def lost() -> None:
        raise RuntimeError("executor lost")

    with caplog.at_level("ERROR", logger="churn_platform.batch_scoring"), pytest.raises(RuntimeError, match="lost"):
        rejects_after_scores(lost, "out/scores.parquet", "out/scores.rejects.parquet")
    assert (
        "the scores at out/scores.parquet are this run's, but any file at out/scores.rejects.parquet is an "
        "earlier run's rejects" in caplog.text
    )


def test_progress_in_a_log_is_a_line_per_update(registry_uri, customers, tmp_path):
    """Out of a terminal (a pod's log, a pipe), the bar redrawn with \\r ran every update and the
    summary into one line."""
    source = tmp_path / "customers.parquet"
    customers.head(50).to_parquet(source, index=False)
    result = CliRunner().invoke(main, ["score", "--tracking-uri", registry_uri, "--input", str(source),
                                       "--output", str(tmp_path / "scores.parquet")])  # fmt: skip
    assert result.exit_code == 0, result.output
    progress = [line.strip("\r") for line in result.stderr.splitlines() if "scoring:" in line]
    assert progress and all(line.startswith("scoring: ") and line.count("scoring:") == 1 for line in progress)
    assert progress[-1].startswith("scoring: 50.0 rows in "), progress


def test_a_version_whose_artifacts_are_gone_is_exit_2_naming_what_is_missing(embedded, customers, tmp_path):
    """A run whose artifacts were cleaned up (or a version registered from a notebook): MLflow's
    error reached the catch-all, exit 70 "a bug, please report it"."""
    import mlflow
    from mlflow import MlflowClient

    from churn_platform.training import TrainConfig, train

    result = train(TrainConfig(n_rows=600, model_name="gone"), Settings(tracking_uri=embedded))
    customers.head(50).to_parquet(tmp_path / "in.parquet", index=False)
    args = ["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet"), "--model-name", "gone",
            "--version", str(result.version)]  # fmt: skip
    run_artifacts = Path(MlflowClient().get_run(result.run_id).info.artifact_uri.removeprefix("file://"))
    # A reference from another schema (no `gender`): the monitor's KeyError was exit 70 too.
    reference = run_artifacts / "reference" / "reference.parquet"
    pd.read_parquet(reference).drop(columns=["gender"]).to_parquet(reference, index=False)
    monitored = CliRunner().invoke(main, ["monitor", "--tracking-uri", embedded, "--model-name", "gone", "--version",
                                          str(result.version), "--current", str(tmp_path / "in.parquet")])  # fmt: skip
    assert monitored.exit_code == 2, monitored.output
    assert "lacks the features ['gender']: it was trained on another schema" in monitored.output
    shutil.rmtree(run_artifacts / "reference")
    missing = run(embedded, *args)
    assert missing.exit_code == 2, missing.output
    assert f"gone v{result.version}: the reference rows that verify its scorer cannot be read" in missing.stderr
    assert "CHURN_VERIFY_SAMPLE_ROWS=0" in missing.stderr and "a bug" not in missing.stderr
    source = MlflowClient().get_model_version("gone", str(result.version)).source  # models:/m-<id>
    shutil.rmtree(Path(mlflow.get_logged_model(source.rsplit("/", 1)[1]).artifact_location.removeprefix("file://")))
    gone = run(embedded, *args)
    assert gone.exit_code == 2 and "its model artifacts cannot be read or do not load here" in gone.stderr, gone.output
    assert not (tmp_path / "out.parquet").exists()


def test_the_monitor_scoring_a_file_with_a_version_that_does_not_load_is_exit_2(embedded, customers, tmp_path, setenv):
    """Re-scoring a file for prediction drift loaded the model with MLflow's own call: a
    version whose artifacts were cleaned up was a traceback, exit 70 "a bug"."""
    import mlflow
    from mlflow import MlflowClient

    from churn_platform.training import TrainConfig, train

    setenv(CHURN_MONITOR_MIN_ROWS="100")  # a 600-row training set is the reference
    result = train(TrainConfig(n_rows=600, model_name="gone"), Settings(tracking_uri=embedded))
    source = MlflowClient().get_model_version("gone", str(result.version)).source  # models:/m-<id>
    shutil.rmtree(Path(mlflow.get_logged_model(source.rsplit("/", 1)[1]).artifact_location.removeprefix("file://")))
    customers.head(500).to_parquet(tmp_path / "in.parquet", index=False)
    monitored = CliRunner().invoke(main, ["monitor", "--tracking-uri", embedded, "--model-name", "gone", "--version",
                                          str(result.version), "--current", str(tmp_path / "in.parquet")])  # fmt: skip
    assert monitored.exit_code == 2, monitored.output
    assert "its model artifacts cannot be read or do not load here" in monitored.output


def test_a_folder_reads_what_its_glob_reads_through_symlinks_and_brackets_each_file_once(
    registry_uri, customers, tmp_path
):
    """A folder input skipped symlinked folders (``current -> ../nfs/2026-11``) that its glob read,
    with exit 0 and fewer customers; a folder named ``exp[2026]`` was taken for a pattern."""
    mounted = tmp_path / "nfs" / "2026-11"
    mounted.mkdir(parents=True)
    customers.iloc[:10].to_csv(mounted / "b.csv", index=False)
    folder = tmp_path / "exp[2026]"
    folder.mkdir()
    customers.iloc[10:30].to_csv(folder / "a.csv", index=False)
    (folder / "current").symlink_to(mounted, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # read once, not once per level

    def rows(source: str) -> int:
        result = run(registry_uri, "--input", source, "--output", str(tmp_path / "scores.parquet"), "--json")
        assert result.exit_code == 0, (source, result.output)
        return json.loads(result.stdout)["rows"]

    assert [rows(s) for s in (str(folder), f"{folder}/", f"{glob.escape(str(folder))}/**/*.csv")] == [30, 30, 30]
    # A writer's leftovers in the linked folder are hidden there too; a second loop (2**40 paths
    # to a walk that follows links blindly) ends as the first does.
    (mounted / "_temporary" / "0").mkdir(parents=True)
    customers.iloc[30:40].to_csv(mounted / "_temporary" / "0" / "part-0.csv", index=False)
    (folder / "current" / "back").symlink_to(folder, target_is_directory=True)
    assert rows(str(folder)) == 30
    # The user's own `**` pattern too: Python's glob went round both loops (2**40 paths).
    assert rows(f"{glob.escape(str(folder))}/**/*.csv") == 30
    # One level down is glob's: current/b.csv, and loop/a.csv (that is a.csv, read once).
    assert rows(f"{glob.escape(str(folder))}/*/*.csv") == 30
    assert rows(f"{glob.escape(str(folder))}/current/*.csv") == 10


def test_two_columns_that_mean_one_name_the_file_among_a_folders(registry_uri, customers, tmp_path):
    """A folder of 200 exports said only "columns 'customer_id' and 'customerID' both mean ...":
    which file had both was for the user to find."""
    folder = tmp_path / "exports"
    folder.mkdir()
    customers.iloc[:10].to_csv(folder / "a.csv", index=False)
    customers.iloc[10:20].assign(customerID="x").to_csv(folder / "b.csv", index=False)
    result = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 2, result.output
    assert f"{(folder / 'b.csv').resolve()}: columns 'customer_id' and 'customerID' both mean" in result.output


def test_a_list_where_a_value_goes_is_refused_by_name_before_anything_is_scored(registry_uri, customers, tmp_path):
    """A Parquet column of lists (a category exported as tags) failed inside Arrow's reader:
    KeyError, "a bug" (exit 70), after the files before it were scored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "exports"
    folder.mkdir()
    customers.iloc[:10].to_parquet(folder / "a.parquet", index=False)
    table = pa.Table.from_pandas(customers.iloc[10:20], preserve_index=False)
    tags = pa.array([[v] for v in customers.iloc[10:20]["internet_service"]])
    pq.write_table(table.set_column(table.schema.get_field_index("internet_service"), "internet_service", tags),
                   folder / "b.parquet")  # fmt: skip
    result = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "scores.parquet"))
    assert result.exit_code == 2, result.output
    assert "b.parquet: 'internet_service' (list<element: string>): a list or record in each row" in result.output
    assert not (tmp_path / "scores.parquet").exists()


def test_a_folder_the_job_cannot_read_is_named_not_passed_over_in_silence(
    registry_uri, customers, tmp_path, monkeypatch, caplog
):
    """A subfolder on NFS or another user's was passed over as glob passes over it: its customers
    went unscored, unseen, exit 0. It is named in a warning, as compressed files are (a root-owned
    lost+found atop a volume is the filesystem's, not the user's); the input itself unreadable is
    an error. (Root reads every folder: the refusal is the kernel's answer played by os.scandir.)"""
    folder = tmp_path / "exports"
    for sub in ("locked", "lost+found"):
        (folder / sub).mkdir(parents=True)
    customers.iloc[:10].to_csv(folder / "a.csv", index=False)
    customers.iloc[10:20].to_csv(folder / "locked" / "b.csv", index=False)
    refused = {str((folder / "locked").resolve()), str((folder / "lost+found").resolve())}
    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.path.realpath(path) in refused:  # an int: a descriptor
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for source in (str(folder), f"{folder}/**/*.csv"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="churn_platform.batch_scoring"):
            result = run(registry_uri, "--input", source, "--output", str(tmp_path / "s.parquet"), "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["rows"] == 10, result.output
        assert "not reading 1 folder(s)" in caplog.text and "locked (Permission denied)" in caplog.text
        assert "lost+found" not in caplog.text
    refused.add(str(folder.resolve()))
    result = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "t.parquet"))
    assert result.exit_code == 2 and f"cannot read folder {folder}: Permission denied" in result.output, result.output


@pytest.mark.parametrize("pattern", ["*.csv", "**/*.csv", "**", "a/**", "a/*/*.csv", "a/**/*.csv", "*/*.csv",
                                     "a/b/**/c/*.csv", "**/c/*", "a//b/*.csv", "a/*/", "**/*.parquet",
                                     "a/l?/*/*.csv", "**/**/*.csv", "a/[bx]/*", "a/*/../*.csv", "a/*/./*.csv",
                                     "*/b/c/*.csv", "../a/*.csv"])  # fmt: skip
def test_a_local_pattern_names_what_glob_names(tmp_path, monkeypatch, pattern):
    """The walk that replaced glob (to end symlink loops) must find what glob finds: relative
    and absolute, `.` and `..` and names after a wildcard, hidden names, links without loops."""
    from churn_platform.batch_scoring import _HIDDEN, _local_files

    root = tmp_path / "t"
    for folder in ("a/b/c", "a/x", "e/f", "a/_h", ".d"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ("1.csv", "a/2.csv", "a/b/3.csv", "a/b/c/4.csv", "a/x/5.parquet", "e/f/6.csv", "a/_h/7.csv",
                 ".d/8.csv", "a/_9.csv", "e/.10.csv"):  # fmt: skip
        (root / name).write_text("x")
    (root / "a" / "le").symlink_to(root / "e", target_is_directory=True)

    def visible(files: list[str]) -> list[str]:
        return [f for f in files if not any(p.startswith(_HIDDEN) for p in os.path.relpath(f, root).split("/"))]

    found = []
    for cwd, spelled in ((root, f"{root}/{pattern}"), (root, pattern), (root / "a", pattern)):  # `..` from a/
        monkeypatch.chdir(cwd)
        expected = sorted({os.path.realpath(p) for p in glob.glob(spelled, recursive=True) if os.path.isfile(p)})
        assert visible(_local_files(spelled)) == visible(expected), (cwd, spelled)
        found += visible(expected)
    # Each pattern names some file in one spelling at least ([] == [] compared nothing), but a folder's.
    assert bool(found) != (pattern == "a/*/"), pattern


def test_links_to_one_folder_from_many_places_are_read_once(tmp_path, monkeypatch):
    """Keyed by the path as reached, a folder linked from each level ("latest -> 2026-11")
    was read once per route: 2**levels reads (14 levels took 15 s, 20 would take minutes)."""
    from churn_platform import batch_scoring

    here = tmp_path
    for level in range(14):
        (here / f"d{level}").mkdir()
        (here / f"alias{level}").symlink_to(here / f"d{level}", target_is_directory=True)
        here = here / f"d{level}"
    (here / "x.csv").write_text("x")
    reads = []
    real_scandir = os.scandir
    monkeypatch.setattr(batch_scoring.os, "scandir", lambda path: reads.append(path) or real_scandir(path))
    assert batch_scoring._folder_files(tmp_path) == [str((here / "x.csv").resolve())]  # noqa: SLF001
    assert len(reads) <= 2 * 15, len(reads)  # each real folder, at each of the 2 segments at most
