"""`churn-platform score --engine spark` on a real Spark (local[2]), against the local engine
and the API, on the embedded registry and real customers."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from churn_platform import data
from serving.app import create_app
from tests.conftest import damage_first_page, stop_spark
from tests.unit.test_api import make_settings, wait_ready
from tests.unit.test_batch_scoring import OUTPUT_COLUMNS, run

#: local[2] as in CI; a JVM that starts in 8 s rather than 12 (no C2 compiler for a short job).
SPARK = ["--engine", "spark", "--spark-master", "local[2]",
         "--spark-conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"]  # fmt: skip


def notebook():
    """A session's builder as a notebook would start one here: local[2], the JVM options of ``SPARK``."""
    from pyspark.sql import SparkSession

    return SparkSession.builder.master("local[2]").config("spark.driver.extraJavaOptions", SPARK[-1].split("=", 1)[1])


@pytest.fixture(scope="module", autouse=True)
def _one_jvm_for_the_module():
    yield
    stop_spark()


@pytest.fixture(autouse=True)
def _a_session_already_running(request):
    """Most tests run the job on a session already running, as in a notebook: it keeps its
    context and Python workers between runs (a run on 5 rows took 5 s with a session of its own,
    1 s on one already there). Tests marked ``own_session`` find none running: the job starts its
    own and stops it, as `churn-platform score --engine spark` does, or the test starts one."""
    from pyspark.sql import SparkSession

    if request.node.get_closest_marker("own_session"):
        stop_spark()
        return
    if SparkSession.getActiveSession() is None:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # as the job sets it for its own
        notebook().getOrCreate().sparkContext.setLogLevel("FATAL")  # as the job sets it for its own


@pytest.mark.own_session
def test_spark_local_and_the_api_agree_on_1000_real_customers(registry_uri, customers, tmp_path):
    source = tmp_path / "customers.parquet"
    customers.head(1000).to_parquet(source, index=False)
    outputs = {}
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(source), "--output", str(out), "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert (summary["rows"], summary["scored"], summary["rejected"], summary["model_version"]) == (1000, 1000, 0, 1)
        outputs[engine] = pd.read_parquet(out).set_index("customer_id")
        assert len(pd.read_parquet(tmp_path / f"{engine}.rejects.parquet")) == 0
    local, spark = outputs["local"], outputs["spark"].loc[outputs["local"].index]
    assert list(pd.read_parquet(tmp_path / "spark.parquet").columns) == OUTPUT_COLUMNS
    assert (
        pd.read_parquet(tmp_path / "spark.parquet").dtypes == pd.read_parquet(tmp_path / "local.parquet").dtypes
    ).all()
    with TestClient(create_app(make_settings(registry_uri, tmp_path))) as client:
        wait_ready(client)
        response = client.post("/predict", json={"customers": data.to_records(customers.head(1000))})
    assert response.status_code == 200
    api = pd.DataFrame(response.json()["predictions"]).set_index("customer_id").loc[local.index]
    assert np.max(np.abs(spark["churn_probability"] - local["churn_probability"])) <= 1e-9
    assert np.max(np.abs(spark["churn_probability"] - api["churn_probability"])) <= 1e-9
    assert (spark["risk"] == api["risk"]).all() and (spark["will_churn"] == api["will_churn"]).all()
    assert spark[["model_name", "model_version"]].equals(local[["model_name", "model_version"]])


def test_spark_rejects_the_same_rows_with_the_same_numbers_and_reasons(registry_uri, customers, tmp_path):
    frame = pd.concat([customers] * 3, ignore_index=True).head(10_000).astype(str)  # a CSV export: all text
    frame.loc[41, "monthly_charges"] = ""
    frame.loc[5_000, "contract"] = "Three year"
    frame.loc[9_998, "tenure"] = "twelve"
    folder = tmp_path / "export"
    folder.mkdir()
    frame.iloc[:4_000].to_csv(folder / "part-0.csv", index=False)
    frame.iloc[4_000:].to_csv(folder / "part-1.csv", index=False)
    # Small splits (a CSV file is still one task: its quoted values may span lines).
    result = run(registry_uri, *SPARK, "--spark-conf", "spark.sql.files.maxPartitionBytes=100000",
                 "--input", str(folder), "--output", str(tmp_path / "spark.csv"))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "9997 of 10000 rows scored" in result.stdout and "3 rejected" in result.stdout
    assert len(pd.read_csv(tmp_path / "spark.csv")) == 9_997
    rejects = pd.read_parquet(tmp_path / "spark.rejects.parquet")
    assert rejects["row"].tolist() == [42, 5_001, 9_999]
    assert rejects["reason"].tolist() == [
        "monthly_charges: missing",
        "contract: unknown category (allowed: Month-to-month, One year, Two year)",
        "tenure: not a number",
    ]
    result = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "local.csv"))
    assert result.exit_code == 1, result.output
    assert rejects.equals(pd.read_parquet(tmp_path / "local.rejects.parquet"))
    local, spark = (
        pd.read_csv(tmp_path / f"{e}.csv").sort_values("customer_id", kind="stable") for e in ("local", "spark")
    )
    assert local["customer_id"].tolist() == spark["customer_id"].tolist()
    assert np.max(np.abs(local["churn_probability"].to_numpy() - spark["churn_probability"].to_numpy())) <= 1e-9

    # Parquet with small row groups: Spark reads each file in several tasks, whose row counts number the rows.
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    frame.iloc[:4_000].to_parquet(parquet / "part-0.parquet", index=False, row_group_size=500)
    frame.iloc[4_000:].to_parquet(parquet / "part-1.parquet", index=False, row_group_size=500)
    result = run(registry_uri, *SPARK, "--spark-conf", "spark.sql.files.maxPartitionBytes=100000",
                 "--input", str(parquet), "--output", str(tmp_path / "split.csv"))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert rejects.equals(pd.read_parquet(tmp_path / "split.rejects.parquet"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--engine", "spark", "--spark-conf", "no-equals-sign"], "--spark-conf takes KEY=VALUE"),
        (["--spark-master", "local[2]"], "need --engine spark"),
        # Spark's launcher printed its stack trace for these, after the model's download.
        (["--engine", "spark", "--spark-master", "junk://nowhere"], "--spark-master 'junk://nowhere': Spark takes"),
        (["--engine", "spark", "--spark-master", "local[abc]"], "--spark-master 'local[abc]': Spark takes local,"),
        # Its output is staged through pyarrow, which cannot address an empty path component.
        (["--engine", "spark", "--output", "s3://crm/scores//s.parquet"], "has an empty path component ('//')"),
    ],
)
def test_spark_options_are_checked_before_anything_starts(registry_uri, customers, tmp_path, args, words):
    source = tmp_path / "customers.parquet"
    customers.head(10).to_parquet(source, index=False)
    result = run(registry_uri, "--input", str(source), "--output", str(tmp_path / "scores.parquet"), *args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "scores.parquet").exists()



def test_a_java_failure_is_told_by_its_deepest_exception_not_a_stack_frame():
    """`cannot start Spark: \tat java.base/java.lang.Thread.run(Thread.java:840)`: the last
    line of Py4J's message was a frame of the stack trace."""
    from pyspark.sql import SparkSession

    from churn_platform.spark_scoring import _java_cause

    jvm = SparkSession.getActiveSession().sparkContext._jvm  # noqa: SLF001
    with pytest.raises(Exception) as failed:
        jvm.java.lang.Integer.parseInt("twelve")
    assert _java_cause(failed.value) == 'java.lang.NumberFormatException: For input string: "twelve"'
    assert _java_cause(RuntimeError("Exception: it broke\n\tat a.b(C.java:1)\n\t... 3 more")) == "Exception: it broke"

def test_a_malformed_csv_line_stops_spark_as_it_stops_the_local_engine(registry_uri, customers, tmp_path):
    source = tmp_path / "export.csv"
    customers.head(50).to_csv(source, index=False)
    with source.open("a") as handle:
        handle.write("9999-XXXX,Male,0,No\n")  # four fields of twenty
    for engine, args in (("local", []), ("spark", SPARK)):
        result = run(registry_uri, *args, "--input", str(source), "--output", str(tmp_path / f"{engine}.parquet"))
        assert result.exit_code == 2, result.output
        assert "9999-XXXX,Male,0,No" in result.output and "Traceback" not in result.output
        assert not (tmp_path / f"{engine}.parquet").exists()


def test_a_file_missing_a_column_stops_spark_as_it_stops_the_local_engine(registry_uri, customers, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    customers.head(50).to_parquet(folder / "part-0.parquet", index=False)
    customers.iloc[50:100].drop(columns=["tenure"]).to_parquet(folder / "part-1.parquet", index=False)
    for engine, args in (("local", []), ("spark", SPARK)):
        result = run(registry_uri, *args, "--input", str(folder), "--output", str(tmp_path / f"{engine}.parquet"))
        assert result.exit_code == 2, result.output
        assert f"{folder / 'part-1.parquet'}: missing required columns ['tenure']" in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / f"{engine}.parquet").exists()


def test_chunk_rows_and_sparks_batch_setting_given_apart_are_refused(registry_uri, customers, tmp_path):
    """Spark's setting silently won over --chunk-rows: the memory a user sized was not used."""
    customers.head(5).to_csv(tmp_path / "in.csv", index=False)
    result = run(registry_uri, *SPARK, "--spark-conf", "spark.sql.execution.arrow.maxRecordsPerBatch=500",
                 "--chunk-rows", "2000", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "s.parquet"))
    said = "--chunk-rows 2000 and --spark-conf spark.sql.execution.arrow.maxRecordsPerBatch=500 both set"
    assert result.exit_code == 2 and said in result.output, result.output


@pytest.mark.own_session
def test_a_setting_spark_refuses_is_named_as_the_setting_not_blamed_on_the_input(registry_uri, customers, tmp_path):
    """"Spark could not score in.csv: ... [INVALID_CONF_VALUE.TYPE_MISMATCH] The value 'abc' in
    the config ..." said the input could not be scored; Spark reads the setting only then."""
    customers.head(5).to_csv(tmp_path / "in.csv", index=False)
    try:
        result = run(registry_uri, *SPARK, "--spark-conf", "spark.sql.shuffle.partitions=abc",
                     "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "s.parquet"))  # fmt: skip
    finally:
        stop_spark()  # the JVM keeps the setting for the next session this process starts
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    said = """--spark-conf: The value 'abc' in the config "spark.sql.shuffle.partitions" is invalid."""
    assert said in result.output and "could not score" not in result.output, result.output
    assert not (tmp_path / "s.parquet").exists()

    # One Java reads as it starts (so in a process of its own): its own words come first, and
    # the line names the option.
    import subprocess

    from tests.services import BIN

    job = subprocess.run([str(BIN / "churn-platform"), "score", "--input", str(tmp_path / "in.csv"), "--output",
                          str(tmp_path / "s.parquet"), *SPARK, "--spark-conf", "spark.driver.memory=lots"],
                         env={**os.environ, "MLFLOW_TRACKING_URI": registry_uri}, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert job.returncode == 2 and "Traceback" not in job.stderr, job.stderr
    assert "Invalid maximum heap size: -Xmxlots" in job.stderr, job.stderr
    assert "cannot start Spark: " in job.stderr and "check --spark-conf" in job.stderr, job.stderr
    # With no --spark-conf given (no Java here), the line does not send the user to one.
    job = subprocess.run([str(BIN / "churn-platform"), "score", "--input", str(tmp_path / "in.csv"), "--output",
                          str(tmp_path / "s.parquet"), "--engine", "spark"], capture_output=True, text=True,
                         env={**os.environ, "MLFLOW_TRACKING_URI": registry_uri, "JAVA_HOME": "/nonexistent"},
                         timeout=120)  # fmt: skip
    assert job.returncode == 2 and "cannot start Spark: " in job.stderr and "--spark-conf" not in job.stderr, job.stderr


def test_a_column_typed_otherwise_in_one_parquet_file_is_named_with_its_file_by_spark(
    registry_uri, customers, tmp_path
):
    """Spark's deepest cause ("column: [monthly_charges], physicalType: BINARY, logicalType:
    double") named no file of the folder; the local engine reads each file by its own types."""
    folder = tmp_path / "export"
    folder.mkdir()
    customers.head(20).to_parquet(folder / "a.parquet", index=False)
    customers.iloc[20:40].astype({"monthly_charges": str}).to_parquet(folder / "b.parquet", index=False)
    assert run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "local.parquet")).exit_code == 0
    result = run(registry_uri, *SPARK, "--input", str(folder), "--output", str(tmp_path / "spark.parquet"))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"{folder / 'b.parquet'}: " in result.output and "[monthly_charges]" in result.output, result.output
    assert "`--engine local` reads each file by its own" in result.output


def test_parquet_text_that_is_not_utf8_stops_both_engines_naming_file_and_column(registry_uri, customers, tmp_path):
    """A Hive table of Latin-1 data: Spark's reader passed it on, and the executor's scoring
    failed (a PythonException: exit 70, "a bug", retried as one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(customers.head(20), preserve_index=False)
    latin1 = pa.array([v.encode("latin-1") for v in customers["gender"].head(20).str.replace("Male", "Mâle")])
    source = tmp_path / "hive export" / "part-1.parquet"  # beside a clean file: a batch may hold both
    source.parent.mkdir()
    pq.write_table(table, source.parent / "part-0.parquet")
    pq.write_table(table.set_column(table.column_names.index("gender"), "gender", latin1), source)
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(source.parent), "--output", str(out))
        assert result.exit_code == 2, result.output
        assert f"cannot read {source}: its 'gender' column is not UTF-8 text" in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / f"{engine}.parquet").exists()


def test_a_file_without_ids_stops_both_engines(registry_uri, customers, tmp_path):
    """A list of scores without ids reaches no one: it once replaced the previous list, exit 0."""
    folder = tmp_path / "export"
    folder.mkdir()
    customers.head(50).to_parquet(folder / "part-0.parquet", index=False)
    customers.iloc[50:100].rename(columns={"customer_id": "cust_id"}).to_parquet(folder / "part-1.parquet")
    for engine, args in (("local", []), ("spark", SPARK)):
        result = run(registry_uri, *args, "--input", str(folder), "--output", str(tmp_path / f"{engine}.parquet"))
        assert result.exit_code == 2, result.output
        assert f"{folder / 'part-1.parquet'}: missing required columns ['customer_id']" in result.output
        assert "Traceback" not in result.output and not (tmp_path / f"{engine}.parquet").exists()


def test_many_rejects_from_many_small_files_are_numbered_and_sorted_as_the_local_engine_does(
    registry_uri, customers, tmp_path
):
    """The rejects were gathered on the driver (an input of mostly bad rows ran it out of
    memory); Spark numbers and sorts them now. Small files share a task (Spark packs them, not
    in the input's order) and the sort writes several parts: the file is the local engine's."""
    frame = pd.concat([customers] * 2, ignore_index=True).head(6_000).astype(str)
    frame.loc[frame.index % 3 == 1, "tenure"] = "twelve"
    frame.loc[frame.index % 7 == 0, "contract"] = "Three year"
    folder = tmp_path / "export"
    folder.mkdir()
    for i in range(30):
        frame.iloc[i * 200 : (i + 1) * 200].to_csv(folder / f"day-{i:02d}.csv", index=False)
    conf = ["spark.sql.shuffle.partitions=3", "spark.sql.adaptive.coalescePartitions.enabled=false"]
    result = run(registry_uri, *SPARK, *(a for c in conf for a in ("--spark-conf", c)),
                 "--input", str(folder), "--output", str(tmp_path / "spark.parquet"))  # fmt: skip
    assert result.exit_code == 1 and "rejected" in result.stdout, result.output
    local = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "local.parquet"))
    assert local.exit_code == 1, local.output
    rejects = pd.read_parquet(tmp_path / "spark.rejects.parquet")
    assert len(rejects) > 2_000 and rejects["row"].is_monotonic_increasing
    assert rejects.equals(pd.read_parquet(tmp_path / "local.rejects.parquet"))
    # Every row bad: both engines name the same first reasons.
    frame.assign(tenure="twelve").to_csv(folder / "day-00.csv", index=False)
    for name in [f"day-{i:02d}.csv" for i in range(1, 30)]:
        (folder / name).unlink()
    said = {engine: run(registry_uri, *args, "--input", str(folder), "--output", str(tmp_path / "none.parquet"))
            for engine, args in (("local", []), ("spark", SPARK))}  # fmt: skip
    assert {r.exit_code for r in said.values()} == {2}
    first = [r.output[r.output.index("The first reasons"):].splitlines()[0] for r in said.values()]
    assert first[0] == first[1], first


def test_an_input_whose_every_row_is_rejected_leaves_the_previous_output(registry_uri, customers, tmp_path):
    """An upstream format change (Yes/No where 0/1 was) fails every row: the job says so, exit 2,
    rather than replace last week's list with an empty one."""
    changed = customers.head(40).astype({"senior_citizen": str})
    changed["senior_citizen"] = np.where(customers.head(40)["senior_citizen"] == 1, "Yes", "No")
    changed.to_csv(tmp_path / "changed.csv", index=False)
    customers.head(30).to_parquet(tmp_path / "good.parquet", index=False)
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        assert run(registry_uri, *args, "--input", str(tmp_path / "good.parquet"), "--output", str(out)).exit_code == 0
        result = run(registry_uri, *args, "--input", str(tmp_path / "changed.csv"), "--output", str(out))
        assert result.exit_code == 2, result.output
        assert "none of the 40 rows in" in result.output and "the previous output is left as it was" in result.output
        assert "senior_citizen: " in result.output and "Traceback" not in result.output
        assert len(pd.read_parquet(out)) == 30
        assert pd.read_parquet(tmp_path / f"{engine}.rejects.parquet").empty  # still the good run's
        # Half of it broken: exit 1 replaced the list with half of it, unless a share says no.
        half = pd.concat([changed.head(20), customers.iloc[100:120].astype(str)], ignore_index=True)
        half.to_csv(tmp_path / "half.csv", index=False)
        limited = run(registry_uri, *args, "--input", str(tmp_path / "half.csv"), "--output", str(out),
                      "--max-reject-share", "0.25")  # fmt: skip
        assert limited.exit_code == 2, limited.output
        assert "20 of the 40 rows in" in limited.output and "(50.0%), over --max-reject-share 0.25" in limited.output
        assert len(pd.read_parquet(out)) == 30  # the previous output stays
        within = run(registry_uri, *args, "--input", str(tmp_path / "half.csv"), "--output", str(out),
                     "--max-reject-share", "0.5")  # fmt: skip
        assert within.exit_code == 1 and len(pd.read_parquet(out)) == 20, within.output


def test_folders_with_spaces_in_their_names_work_on_spark(registry_uri, customers, tmp_path):
    """Spark was handed percent-encoded paths, which Hadoop reads literally (my%20exports)."""
    folder, out = tmp_path / "my exports", tmp_path / "weekly scores" / "latest list.parquet"
    folder.mkdir()
    out.parent.mkdir()
    customers.head(30).to_csv(folder / "week 1.csv", index=False)
    result = run(registry_uri, *SPARK, "--input", str(folder), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(out)["customer_id"].tolist() == customers.head(30)["customer_id"].tolist()


def test_line_breaks_inside_quoted_values_are_read_by_both_engines(registry_uri, customers, tmp_path):
    """A notes column with line breaks, past Arrow's 8 MiB block: the local engine once called
    the valid file malformed at random, and Spark, reading line by line, made each row two."""
    export = pd.concat([customers] * 12, ignore_index=True).assign(notes="called back\n" + "x" * 1000)
    export.to_csv(tmp_path / "crm.csv", index=False)
    assert (tmp_path / "crm.csv").stat().st_size > 9 << 20
    result = run(registry_uri, "--input", str(tmp_path / "crm.csv"), "--output", str(tmp_path / "local.parquet"))
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "local.parquet")) == len(export)
    spark = tmp_path / "spark.parquet"
    result = run(registry_uri, *SPARK, "--input", str(tmp_path / "crm.csv"), "--output", str(spark))
    assert result.exit_code == 0, result.output
    local, spark = pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(spark)
    assert len(spark) == len(export) and spark["customer_id"].tolist() == local["customer_id"].tolist()
    assert np.max(np.abs(local["churn_probability"].to_numpy() - spark["churn_probability"].to_numpy())) <= 1e-9


def test_floating_point_ids_come_out_as_the_local_engine_gives_them(registry_uri, customers, tmp_path):
    """pandas saves integer ids with a gap as doubles; Spark cast them to "7590.0", the local
    engine to "7590": the same customer under two ids depending on the engine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = customers.head(7).drop(columns=["customer_id"])
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        "customer_id", pa.array([7590.0, 123456789012345.0, 12.5, None, float("nan"), float("inf"), -float("inf")])
    )  # NaN as NaN, not null: Spark's floor() of NaN or inf overflowed, and the local engine scored "nan"
    source = tmp_path / "customers.parquet"
    pq.write_table(table, source)
    ids, reasons = {}, {}
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(source), "--output", str(out))
        assert result.exit_code == 1, result.output  # the rows without an id are rejects
        ids[engine] = pd.read_parquet(out)["customer_id"].tolist()
        rejects = pd.read_parquet(tmp_path / f"{engine}.rejects.parquet")
        reasons[engine] = dict(zip(rejects["row"], rejects["reason"], strict=True))
    assert ids["spark"] == ids["local"] == ["7590", "123456789012345", "12.5"]
    assert reasons["spark"] == reasons["local"] == {row: "customer_id: empty" for row in (4, 5, 6, 7)}
    # Single precision: the local engine compared the ids with 2**53, which float32 cannot hold (exit 2).
    pq.write_table(table.set_column(table.num_columns - 1, "customer_id",
                                    pa.array([7590.0, 16_777_216.0, 12.5, None, float("nan"), 1.0, 2.0],
                                             pa.float32())), source)  # fmt: skip
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}-32.parquet"
        result = run(registry_uri, *args, "--input", str(source), "--output", str(out))
        assert result.exit_code == 1, result.output
        ids[engine] = pd.read_parquet(out)["customer_id"].tolist()
    assert ids["spark"] == ids["local"] == ["7590", "16777216", "12.5", "1", "2"]


def test_a_nanosecond_timestamp_no_one_reads_is_scored_past_by_both_engines(registry_uri, customers, tmp_path):
    """pandas writes datetime64[ns] as a nanosecond Parquet timestamp, which Spark cannot type
    (and it types every column before keeping the job's): a CRM export's `exported_at` stopped
    Spark with exit 2, where the local engine scored the file."""
    import pyarrow.parquet as pq

    frame = customers.head(6).assign(exported_at=pd.to_datetime(["2026-11-30 12:00:00.000000001"] * 6))
    frame.to_parquet(tmp_path / "export.parquet", index=False)
    assert "ns" in str(pq.read_schema(tmp_path / "export.parquet").field("exported_at").type)
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(tmp_path / "export.parquet"), "--output", str(out))
        assert result.exit_code == 0, (engine, result.output)
        assert pd.read_parquet(out)["customer_id"].tolist() == frame["customer_id"].tolist(), engine


def test_ids_no_store_could_hold_are_rejects_in_both_engines(registry_uri, customers, tmp_path):
    """The API, the log and the outcomes refuse an id over 128 characters or holding a control
    character; batch scoring wrote them out, for a campaign no outcome could ever join."""
    frame = customers.head(4).copy()
    frame["customer_id"] = ["x" * 129, "abc\x01def", " padded ", "7590-VHVEG"]
    frame.to_csv(tmp_path / "crm.csv", index=False)
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(tmp_path / "crm.csv"), "--output", str(out))
        assert result.exit_code == 1, result.output
        assert sorted(pd.read_parquet(out)["customer_id"]) == ["7590-VHVEG", "padded"], engine
        rejects = pd.read_parquet(tmp_path / f"{engine}.rejects.parquet")
        assert rejects["reason"].tolist() == ["customer_id: longer than 128 characters",
                                              "customer_id: contains a control character (tab, newline, NUL...)"]


def test_a_quoted_value_ending_in_a_backslash_costs_spark_no_row(registry_uri, customers, tmp_path):
    """Spark's default CSV escape is a backslash: a notes value ending in one (a Windows path)
    swallowed every later row into itself, and the job said all rows were scored (exit 0)."""
    export = customers.head(5).assign(notes=["ok", "a, C:\\temp\\", "b", "c", "d"])
    export.to_csv(tmp_path / "crm.csv", index=False)
    assert '"a, C:\\temp\\"' in (tmp_path / "crm.csv").read_text()
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(tmp_path / "crm.csv"), "--output", str(out))
        assert result.exit_code == 0, result.output
        assert pd.read_parquet(out)["customer_id"].tolist() == export["customer_id"].tolist(), engine


def test_a_file_with_brackets_in_its_name_is_read_by_both_engines(registry_uri, customers, tmp_path):
    """A name is not a pattern: the local engine said "no CSV or Parquet files" for a file
    named export[1].csv, and Spark's reader, globbing it, found no such path."""
    folder = tmp_path / "sp"
    folder.mkdir()
    customers.head(5).to_csv(folder / "export[1].csv", index=False)
    for engine, args, source in (("local", [], folder / "export[1].csv"), ("spark", SPARK, folder / "export[1].csv"),
                                 ("spark-folder", SPARK, folder)):  # fmt: skip
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(source), "--output", str(out))
        assert result.exit_code == 0, (engine, result.output)
        assert sorted(pd.read_parquet(out)["customer_id"]) == sorted(customers.head(5)["customer_id"]), engine
    # An output of such a name, with rejects: the rejects' read of the staging folder globbed it.
    customers.head(5).assign(tenure=["x", 1, 2, 3, 4]).to_csv(folder / "export[1].csv", index=False)
    result = run(registry_uri, *SPARK, "--input", str(folder), "--output", str(tmp_path / "scores[1].parquet"))
    assert result.exit_code == 1, result.output
    assert pd.read_parquet(tmp_path / "scores[1].rejects.parquet")["row"].tolist() == [1]



def test_a_file_with_a_colon_in_its_name_is_named_by_spark(registry_uri, customers, tmp_path):
    """A timestamped export (`exp:2026-12-07.csv`) stopped Spark with Hadoop's "Relative path in
    absolute URI: .exp:2026-12-07.csv.crc", naming no file of a folder of hundreds."""
    (tmp_path / "in").mkdir()
    customers.head(5).to_csv(tmp_path / "in" / "exp:2026-12-07.csv", index=False)
    customers.head(5).to_csv(tmp_path / "in" / "exp.csv", index=False)
    result = run(registry_uri, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "local.parquet"))
    assert result.exit_code == 0, result.output
    result = run(registry_uri, *SPARK, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "spark.parquet"))
    assert result.exit_code == 2, result.output
    assert "exp:2026-12-07.csv: Spark cannot read a local file whose name holds ':'" in result.output

def test_a_failed_sort_of_the_rejects_leaves_the_previous_output(registry_uri, customers, tmp_path, monkeypatch):
    """The rejects are a second Spark job: run after the scores were committed, its failure (an
    executor lost) left this run's scores beside an earlier run's rejects; now it runs first.
    Writing them after the scores may still fail: the note says whose each file is."""
    from pyspark.errors import PySparkException

    from churn_platform import spark_scoring

    def fails(*args, **kwargs):
        raise PySparkException(message="java.io.IOException: No space left on device")

    customers.head(5).assign(tenure=["x", 1, 2, 3, 4]).to_csv(tmp_path / "in.csv", index=False)
    # Spark's sort of the rejects fails before the scores are committed: the previous output stands.
    previous = customers.head(2)[["customer_id"]].assign(churn_probability=0.5)  # an earlier run's scores
    previous.to_parquet(tmp_path / "s.parquet")
    with monkeypatch.context() as patch:
        patch.setattr(spark_scoring, "_sort_rejects", fails)
        result = run(registry_uri, *SPARK, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 2 and "are this run's" not in result.output, result.output
    assert pd.read_parquet(tmp_path / "s.parquet").equals(previous)
    # Writing the sorted rejects fails after the scores: the note says whose each file is.
    monkeypatch.setattr(spark_scoring, "_write_rejects", fails)
    result = run(registry_uri, *SPARK, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "s.parquet"))
    assert result.exit_code == 2, result.output
    assert f"the scores at {tmp_path / 's.parquet'} are this run's, but any file at" in result.output, result.output
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 4


def test_a_spreadsheet_export_with_empty_trailing_columns_is_scored_by_both_engines(registry_uri, customers, tmp_path):
    """A spreadsheet's CSV ends every line with ",,": two unnamed columns no one reads, refused
    as "columns '' and '' both mean ''"."""
    text = customers.head(5).to_csv(index=False)
    (tmp_path / "sheet.csv").write_text("".join(f"{line},,\n" for line in text.splitlines()))
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(tmp_path / "sheet.csv"), "--output", str(out))
        assert result.exit_code == 0, (engine, result.output)
        assert sorted(pd.read_parquet(out)["customer_id"]) == sorted(customers.head(5)["customer_id"]), engine
    # Spark then takes columns by position: a second file must have the same header.
    folder = tmp_path / "sheets"
    folder.mkdir()
    (folder / "a.csv").write_text((tmp_path / "sheet.csv").read_text())
    shuffled = customers.head(5)[list(reversed(customers.columns))].to_csv(index=False)
    (folder / "b.csv").write_text("".join(f"{line},,\n" for line in shuffled.splitlines()))
    result = run(registry_uri, *SPARK, "--input", str(folder), "--output", str(tmp_path / "two.parquet"))
    assert result.exit_code == 2 and "b.csv: its header differs from" in result.output, result.output
    result = run(registry_uri, "--input", str(folder), "--output", str(tmp_path / "two.parquet"))
    assert result.exit_code == 0, result.output  # the local engine reads each file by its names


def test_an_empty_parquet_file_beside_others_is_skipped_by_both_engines(registry_uri, customers, tmp_path):
    """pandas writes an empty frame's text columns as Arrow's null type: Spark took the folder's
    schema from it and failed the whole run on the other files, naming none."""
    folder = tmp_path / "daily"
    folder.mkdir()
    pd.DataFrame(columns=customers.columns).to_parquet(folder / "2026-12-05.parquet", index=False)
    customers.head(30).to_parquet(folder / "2026-12-06.parquet", index=False)
    customers.iloc[30:50].to_parquet(folder / "2026-12-07.parquet", index=False)
    scores = {}
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(folder), "--output", str(out), "--json")
        assert result.exit_code == 0, (engine, result.output)
        assert json.loads(result.stdout)["scored"] == 50, (engine, result.stdout)
        scores[engine] = pd.read_parquet(out).set_index("customer_id").churn_probability.sort_index()
    assert list(scores["spark"].index) == sorted(customers.head(50)["customer_id"])
    assert np.max(np.abs(scores["spark"] - scores["local"])) <= 1e-9
    # Only empty files: no rows, said as the local engine says it, the earlier scores kept.
    (folder / "2026-12-06.parquet").unlink()
    (folder / "2026-12-07.parquet").unlink()
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(folder), "--output", str(out))
        assert result.exit_code == 2 and f"no rows in {folder}" in result.output, (engine, result.output)
        assert len(pd.read_parquet(out)) == 50, engine


def test_a_csv_that_starts_with_a_blank_line_is_read_by_both_engines(registry_uri, customers, tmp_path):
    """Arrow skips the blank line; the header check called the file empty."""
    (tmp_path / "blank.csv").write_text("\n" + customers.head(3).to_csv(index=False))
    for engine, args in (("local", []), ("spark", SPARK)):
        out = tmp_path / f"{engine}.parquet"
        result = run(registry_uri, *args, "--input", str(tmp_path / "blank.csv"), "--output", str(out))
        assert result.exit_code == 0, (engine, result.output)
        assert sorted(pd.read_parquet(out)["customer_id"]) == sorted(customers.head(3)["customer_id"]), engine


def test_columns_no_one_reads_that_differ_only_by_case_are_scored_by_both_engines(registry_uri, customers, tmp_path):
    """`notes` and `Notes` beside the features: Spark, case-insensitive by default, refused the
    file (COLUMN_ALREADY_EXISTS, exit 2) where the local engine scored it."""
    # And a header in backticks (`tenure`), which the local engine reads as tenure: Spark's
    # column reference broke on it (INVALID_ATTRIBUTE_NAME_SYNTAX, exit 2).
    frame = customers.head(5).assign(notes="a", Notes="b").rename(columns={"tenure": "`tenure`"})
    frame.to_csv(tmp_path / "cased.csv", index=False)
    frame.to_parquet(tmp_path / "cased.parquet", index=False)
    for name in ("cased.csv", "cased.parquet"):
        for engine, args in (("local", []), ("spark", SPARK)):
            out = tmp_path / f"{engine}-{name}.parquet"
            result = run(registry_uri, *args, "--input", str(tmp_path / name), "--output", str(out))
            assert result.exit_code == 0, (engine, name, result.output)
            assert sorted(pd.read_parquet(out)["customer_id"]) == sorted(frame["customer_id"]), (engine, name)


def test_a_store_blip_while_merging_sparks_parts_is_exit_3_not_a_bug():
    """pyarrow's OSError listing or reading the staged parts on S3 reached the handler as an
    unexpected error: a traceback, exit 70 and "please report it", where a retry was the answer."""
    from churn_platform.errors import StorageUnreachable
    from churn_platform.spark_scoring import _translated

    blip = _translated(OSError("AWS Error NETWORK_CONNECTION: curlCode: 7, Couldn't connect to server"), "s3://b/in/")
    assert isinstance(blip, StorageUnreachable) and int(blip.exit_code) == 3
    assert "object store unreachable while writing the scores of s3://b/in/" in str(blip)
    full = OSError(28, "No space left on device")
    assert _translated(full, "s3://b/in/") is full  # not a store that does not answer: still reported as it is


def test_sparks_errors_are_retried_by_what_failed_not_by_the_words_of_a_row():
    """The deepest cause alone missed s3a's throttling (it wraps the SDK's 503), and message
    words made a malformed row holding "Disconnected" an outage, retried."""
    from py4j.protocol import Py4JError

    from churn_platform.errors import DataSourceError, StorageUnreachable
    from churn_platform.spark_scoring import _translated

    throttled = Py4JError(
        "An error occurred while calling o91.parquet.\n: org.apache.spark.SparkException: Job aborted.\n"
        "Caused by: org.apache.hadoop.fs.s3a.AWSServiceThrottledException: getFileStatus on s3a://b/in/x.csv\n"
        "Caused by: software.amazon.awssdk.services.s3.model.S3Exception: Please reduce your request rate."
    )
    assert isinstance(_translated(throttled, "s3://b/in/"), StorageUnreachable)
    malformed = Py4JError(
        "An error occurred while calling o91.parquet.\n: org.apache.spark.SparkException: Job aborted.\n"
        "Caused by: org.apache.spark.SparkException: Malformed CSV record: b,Disconnected,Male,connect timeout"
    )
    refused = _translated(malformed, "s3://b/in/")
    assert isinstance(refused, DataSourceError) and "Malformed CSV record" in str(refused)


def test_a_failure_that_is_not_the_inputs_is_reported_as_it_is_and_retried():
    """Every Spark failure it did not know was exit 2, "bad input": an executor killed for memory
    or a bug in the scoring code was never retried, and its runbook line said to fix the input."""
    from py4j.protocol import Py4JError, Py4JNetworkError

    from churn_platform.spark_scoring import _translated

    aborted = "An error occurred while calling o91.parquet.\n: org.apache.spark.SparkException: Job aborted due to "
    for message in (
        "stage failure: Task 0 in stage 3.0 failed 1 times, most recent failure: Lost task 0.0 in stage 3.0 (TID 3) "
        "(10.0.0.5 executor 1): org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "churn_platform/spark_scoring.py", line 240, in _score_partition\nKeyError: \'tenure\'',
        "stage failure: Task 2 in stage 1.0 failed 4 times, most recent failure: Lost task 2.3 in stage 1.0 (TID 9): "
        "ExecutorLostFailure (executor 2 exited caused by one of the running tasks) Reason: Container killed by "
        "YARN for exceeding memory limits",
        "stage failure: ... org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)",
        "stage failure: ...\nCaused by: java.lang.OutOfMemoryError: Java heap space",
        "stage failure: ...\nCaused by: java.net.SocketException: Connection reset",
        "stage failure: ...\nCaused by: org.apache.spark.memory.SparkOutOfMemoryError: [UNABLE_TO_ACQUIRE_MEMORY]",
        "stage failure: ... org.apache.spark.shuffle.FetchFailedException: Failed to connect to 10.0.0.7",
        "Job 3 cancelled because SparkContext was shut down",
        # Lost with a network cause that a store outage has too: still the executors', not the store's.
        "stage failure: ... org.apache.spark.shuffle.FetchFailedException: Failed to connect to 10.0.0.7:7337\n"
        "Caused by: java.io.IOException: Failed to connect to /10.0.0.7:7337\n"
        "Caused by: java.net.ConnectException: Connection refused",
        "stage failure: ... ExecutorLostFailure (executor 2 exited caused by one of the running tasks) Reason: "
        "Executor heartbeat timed out\nCaused by: java.net.SocketTimeoutException: Read timed out",
    ):
        failure = Py4JError(aborted + message)
        assert _translated(failure, "s3://b/in/") is failure, message  # exit 70, with the traceback
    gone = Py4JNetworkError("Answer from Java side is empty")
    assert _translated(gone, "s3://b/in/") is gone


def test_the_executors_are_sent_the_risk_bands_and_no_secret(setenv):
    """Every task's pickle carried the whole settings to each executor: the log database's and
    the registry's passwords and the admin key among them."""
    import cloudpickle

    from churn_platform.settings import Settings
    from churn_platform.spark_scoring import _for_executors

    setenv(CHURN_ADMIN_API_KEY="s3cr3t-admin-key", CHURN_INFERENCE_LOG_URL="postgresql://u:pa55word@db/log",
           CHURN_RISK_MEDIUM_FROM="0.25", CHURN_RISK_HIGH_FROM="0.6")  # fmt: skip
    settings = Settings()
    sent = cloudpickle.dumps(_for_executors(settings))
    assert b"s3cr3t-admin-key" not in sent and b"pa55word" not in sent
    assert b"pa55word" in cloudpickle.dumps(settings)  # what was sent before
    bands = cloudpickle.loads(sent)
    assert (bands.risk_medium_from, bands.risk_high_from) == (0.25, 0.6)


def test_executors_with_other_scoring_libraries_are_named_before_the_scoring():
    """The model is verified on the driver and pickled with its scikit-learn: executors with
    another unpickled it into other code and scored, silently not the version's figures."""
    from churn_platform.spark_scoring import _library_versions, _mismatch

    driver = _library_versions()
    assert set(driver) == {"scikit-learn", "numpy"} and _mismatch(driver, dict(driver)) is None
    why = _mismatch(driver, {**driver, "scikit-learn": "1.5.2"})
    assert why.startswith(f"Spark's executors run scikit-learn 1.5.2 (the driver's {driver['scikit-learn']})")
    assert "spark.pyspark.python" in why


def test_executors_without_the_project_are_a_setup_error_not_a_retried_crash():
    """A cluster's (or a notebook's) executors whose Python lacks churn-platform failed each task
    with ModuleNotFoundError: exit 70, "a bug", and the Job retried what no retry mends."""
    from pyspark.errors import PythonException

    from churn_platform.spark_scoring import _translated

    failure = PythonException(message=(
        "\n  An exception was thrown from the Python worker. Please see the stack trace below.\n"
        "Traceback (most recent call last):\n  File \"pyspark/serializers.py\", line 193, in _read_with_length\n"
        "    return self.loads(obj)\nModuleNotFoundError: No module named 'churn_platform'\n"
    ))
    setup = _translated(failure, "in/")
    assert int(setup.exit_code) == 2 and "executors cannot import 'churn_platform'" in str(setup)
    assert "spark.pyspark.python" in str(setup)



@pytest.mark.own_session
def test_the_executors_python_given_with_spark_conf_is_the_one_they_run(registry_uri, customers, tmp_path, setenv):
    """`--spark-conf spark.pyspark.python=...`, which the error for executors without the
    project advises, was ignored (pyspark reads PYSPARK_PYTHON only): the driver's Python ran."""
    setenv(PYSPARK_PYTHON=sys.executable)  # put back after: the job sets it from the setting
    customers.head(20).to_parquet(tmp_path / "customers.parquet", index=False)
    source, output = str(tmp_path / "customers.parquet"), str(tmp_path / "scores.parquet")
    result = run(registry_uri, *SPARK, "--spark-conf", "spark.pyspark.python=/nonexistent/python",
                 "--input", source, "--output", output)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "executors cannot start their Python, '/nonexistent/python' (No such file or directory)" in result.output
    assert not (tmp_path / "scores.parquet").exists()

@pytest.mark.own_session  # a notebook's, started here
def test_a_session_already_running_is_left_as_it_was(registry_uri, customers, tmp_path, setenv):
    """A notebook's session: the job applied its own settings to it (case-sensitive names, UTC,
    its s3a endpoint) and left them there, so the notebook's next queries ran under them."""
    from pyspark.sql import SparkSession

    # s3a is set up for the endpoint (nothing here reads S3); a notebook's executors run its Python.
    setenv(MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:9", PYSPARK_PYTHON=sys.executable)
    stop_spark()
    spark = notebook().config("spark.sql.session.timeZone", "Europe/Paris").appName("notebook").getOrCreate()
    try:
        customers.head(200).to_parquet(tmp_path / "customers.parquet", index=False)
        result = run(registry_uri, "--engine", "spark", "--input", str(tmp_path / "customers.parquet"),
                     "--output", str(tmp_path / "scores.parquet"))  # fmt: skip
        assert result.exit_code == 0, result.output
        assert SparkSession.getActiveSession() is spark and not spark.sparkContext._jsc.sc().isStopped()  # noqa: SLF001
        assert spark.conf.get("spark.sql.session.timeZone") == "Europe/Paris"
        assert spark.conf.get("spark.sql.caseSensitive") == "false" and spark.conf.get("spark.app.name") == "notebook"
        hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # noqa: SLF001
        assert hadoop.get("fs.s3a.endpoint") is None and hadoop.get("fs.s3a.impl.disable.cache") is None
    finally:
        stop_spark()


@pytest.mark.own_session  # a notebook's, started here
def test_a_session_that_skips_unreadable_files_does_not_skip_them_here(registry_uri, customers, tmp_path, setenv):
    """A notebook's (or a cluster's) session set to skip corrupt files scored the readable ones
    and exited 0: the customers of the file it could not read were silently left out."""
    import pyarrow.parquet as pq

    setenv(PYSPARK_PYTHON=sys.executable)
    stop_spark()
    spark = notebook().config("spark.sql.files.ignoreCorruptFiles", "true").getOrCreate()
    try:
        folder = tmp_path / "export"
        folder.mkdir()
        customers.head(100).to_parquet(folder / "part-0.parquet", index=False)
        customers.iloc[100:200].to_parquet(folder / "part-1.parquet", index=False)
        damage_first_page(folder / "part-1.parquet")  # the header check before Spark reads it fine
        assert pq.read_schema(folder / "part-1.parquet").names == list(customers.columns)
        for engine, args in (("local", []), ("spark", ["--engine", "spark"])):
            result = run(registry_uri, *args, "--input", str(folder), "--output", str(tmp_path / f"{engine}.parquet"))
            assert result.exit_code == 2 and "Traceback" not in result.output, (engine, result.output)
            assert not (tmp_path / f"{engine}.parquet").exists()
        assert spark.conf.get("spark.sql.files.ignoreCorruptFiles") == "true"  # the session's own, back
    finally:
        stop_spark()


@pytest.mark.own_session
@pytest.mark.timeout(300)
def test_a_job_stopped_by_sigterm_exits_143_keeps_the_old_output_and_leaves_no_parts(registry_uri, customers,
                                                                                      tmp_path):  # fmt: skip
    """A Job's deadline mid-write: the interrupted gateway made spark.stop() raise, so SIGTERM
    read as a crash (exit 70, "a bug", retried), and the JVM went on writing its parts into the
    staging folder after it was removed."""
    import signal
    import subprocess
    import time

    from tests.services import BIN

    source = tmp_path / "many.parquet"
    pd.concat([customers] * 250, ignore_index=True).to_parquet(source, index=False)  # about a million rows
    output = tmp_path / "out" / "scores.parquet"
    output.parent.mkdir()
    pd.DataFrame({"customer_id": ["kept"], "churn_probability": [0.5]}).to_parquet(output)
    before = output.read_bytes()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry_uri}
    job = subprocess.Popen([str(BIN / "churn-platform"), "score", "--input", str(source), "--output", str(output),
                            "--no-progress", *SPARK], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not list(output.parent.glob(".scores.parquet.*.spark")) and job.poll() is None:
            assert time.monotonic() < deadline, "the job never started writing"
            time.sleep(0.2)
        time.sleep(1)  # its tasks are writing parts now
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 143, err[-3000:]
    assert "a bug" not in err and "Traceback" not in err, err[-3000:]
    assert output.read_bytes() == before
    time.sleep(3)  # a task that went on would write after the job's exit
    assert sorted(p.name for p in output.parent.iterdir()) == ["scores.parquet"]
