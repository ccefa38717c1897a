"""Batch scoring on the real stack: model from an mlflow server (PostgreSQL + moto S3), input
and output on S3, the output appearing only when complete."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from churn_platform import data
from churn_platform.cli import main
from churn_platform.loading import load
from churn_platform.registry import connect
from churn_platform.settings import get_settings
from churn_platform.training import TrainConfig, train
from tests.conftest import spark_s3_jars, stop_spark

pytestmark = pytest.mark.integration


def test_score_reads_and_writes_s3(stack_env, model_name, telco_csv, monkeypatch):
    settings = get_settings()
    version = train(TrainConfig(data=str(telco_csv), model_name=model_name), settings).version
    assert CliRunner().invoke(main, ["promote", "--model-name", model_name, "--version", str(version)]).exit_code == 0
    s3, bucket = stack_env.s3(), stack_env.bucket
    customers = data.load(telco_csv).drop(columns=["churn"]).head(1000).reset_index(drop=True)
    for i, part in enumerate((customers.iloc[:600].copy(), customers.iloc[600:].copy())):
        if i == 1:
            part.loc[part.index[0], "tenure"] = -4  # one bad row, row 601 of the input
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        s3.put_object(Bucket=bucket, Key=f"customers/part-{i}.parquet", Body=buffer.getvalue())

    args = ["score", "--model-name", model_name, "--input", f"s3://{bucket}/customers/",
            "--output", f"s3://{bucket}/scores/latest.parquet", "--no-progress", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["scored"], summary["rejected"]) == (1000, 999, 1)
    assert summary["rejects"] == f"s3://{bucket}/scores/latest.rejects.parquet"

    def read(key: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))

    scores, rejects = read("scores/latest.parquet"), read("scores/latest.rejects.parquet")
    assert rejects["row"].tolist() == [601] and rejects["reason"].tolist() == ["tenure: below 0"]
    served = load(connect(settings), model_name, version, default_threshold=0.5, sample=0)
    good = customers.drop(index=600)
    expected = served.scorer.score(data.to_records(good.drop(columns=["customer_id"])))
    assert scores["customer_id"].tolist() == good["customer_id"].tolist()
    assert np.max(np.abs(scores["churn_probability"].to_numpy() - expected)) <= 1e-9
    assert (scores["model_version"] == version).all()

    # The Spark engine over s3a, the same input and outputs: the same scores and rejects.
    stop_spark()  # a session started without the s3a jars cannot gain them
    spark = [*args[:-1], "--output", f"s3://{bucket}/scores/spark.parquet", "--engine", "spark",
             "--spark-master", "local[2]", "--spark-conf", f"spark.jars={spark_s3_jars()}"]  # fmt: skip
    try:
        result = CliRunner().invoke(main, spark)
    finally:
        stop_spark()
    assert result.exit_code == 1, result.output
    by_spark = read("scores/spark.parquet").set_index("customer_id").loc[scores["customer_id"]]
    assert np.max(np.abs(by_spark["churn_probability"].to_numpy() - scores["churn_probability"].to_numpy())) <= 1e-9
    assert read("scores/spark.rejects.parquet").equals(rejects)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="scores/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [  # no staging folder left behind
        "scores/latest.parquet", "scores/latest.rejects.parquet", "scores/spark.parquet", "scores/spark.rejects.parquet"
    ]

    # A glob, wildcards in the folder too: only the files it names are read. A `*` stays within
    # one folder, as on a local disk: it once took customers-old/2025/part-1.parquet too.
    part_1 = s3.get_object(Bucket=bucket, Key="customers/part-1.parquet")["Body"].read()
    s3.put_object(Bucket=bucket, Key="customers-old/2025/part-1.parquet", Body=part_1)
    globbed = [*args[:3], "--input", f"s3://{bucket}/cust*/part-1.*", "--output", f"s3://{bucket}/scores/one.parquet",
               "--no-progress", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, globbed)
    assert result.exit_code == 1, result.output
    assert (json.loads(result.stdout)["rows"], json.loads(result.stdout)["rejected"]) == (400, 1)
    # A file named itself is read whatever its name, brackets too (not a pattern matching export1).
    s3.put_object(Bucket=bucket, Key="named/export[1].parquet", Body=part_1)
    named = [*args[:3], "--input", f"s3://{bucket}/named/export[1].parquet",
             "--output", f"s3://{bucket}/scores/named.parquet", "--no-progress", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, named)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["rows"] == 400
    # A '#' in a key is the key's (a URL parser cut it off: the rejects then overwrote the scores).
    hashed = [*named[:-4], "--output", f"s3://{bucket}/scores/week#45.parquet", "--no-progress", "--json"]
    assert CliRunner().invoke(main, hashed).exit_code == 1
    assert len(read("scores/week#45.parquet")) == 399 and len(read("scores/week#45.rejects.parquet")) == 1

    # A typo in the input's key or bucket: "input not found", as the local engine says (it was
    # "no CSV or Parquet files in ...", which reads as an empty folder).
    for missing in (f"s3://{bucket}/customers/part-9.parquet", f"s3://{bucket}/custmers/", "s3://no-such-bucket/x/"):
        result = CliRunner().invoke(main, [*args[:3], "--input", missing, *args[5:-1]])
        assert result.exit_code == 2 and f"input not found: {missing}" in result.output, (missing, result.output)
    # An output bucket that does not exist: refused before the model loads, not after the scoring.
    result = CliRunner().invoke(main, [*args[:-1], "--output", "s3://no-such-bucket/latest.parquet"])
    assert result.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in result.output, result.output

    # An object store that does not answer: exit 3, one line, nothing written.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    result = CliRunner().invoke(main, [*args[:-1], "--output", f"s3://{bucket}/scores/other.parquet"])
    assert result.exit_code == 3, result.output
    assert "unreachable" in result.output and "Traceback" not in result.output
