"""Which object-store failures are worth a retry (exit 3): by the error's type or the SDK's
error name, never by words of a message that quotes the user's rows and paths."""

from __future__ import annotations

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from churn_platform import object_store
from churn_platform.spark_scoring import _jvm_unreachable


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def upload_failed(cause: ClientError) -> S3UploadFailedError:
    try:
        try:
            raise cause
        except ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload x to b/k: {exc}")  # noqa: B904 - as boto3 raises it
    except S3UploadFailedError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("exc", "later"),
    [
        (OSError("When getting information for key 'x' in bucket 'crm': AWS Error NETWORK_CONNECTION during "
                 "HeadObject operation: curlCode: 7, Could not connect to server"), True),
        (OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."), True),
        (OSError("AWS Error UNKNOWN (HTTP status 503) during GetObject operation: Service Unavailable"), True),
        (OSError("AWS Error ACCESS_DENIED during GetObject operation: bucket 'crm-connect-timeout'"), False),
        (OSError("CSV parse error: Expected 22 columns, got 23: b,Disconnected,Male,timed out"), False),
        (OSError(13, "Permission denied", "/data/connectors/unreachable.csv"), False),
        (ValueError("Malformed: connection timeout"), False),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (EndpointConnectionError(endpoint_url="http://minio:9000"), True),
        (ReadTimeoutError(endpoint_url="http://minio:9000"), True),
        (NoCredentialsError(), False),
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NotImplemented", 501), False),  # a header the store does not take: so on a retry
        (client_error("XMinioStorageFull", 507), False),
        (OSError("AWS Error UNKNOWN (HTTP status 429) during HeadObject operation: Too Many Requests"), True),
        (OSError("AWS Error UNKNOWN (HTTP status 501) during PutObject operation: not implemented"), False),
        # The same error for an agent away and for an expired SSO session: not retried.
        (CredentialRetrievalError(provider="sso", error_msg="the SSO session has expired"), False),
        (client_error("NoSuchBucket", 404), False),
        (upload_failed(client_error("ServiceUnavailable", 503)), True),
        (upload_failed(client_error("AccessDenied", 403)), False),
    ],
)
def test_a_retry_is_worth_it_only_when_the_store_did_not_answer(exc, later):
    assert object_store.unreachable(exc) is later


@pytest.mark.parametrize(
    ("line", "later"),
    [
        ("java.net.ConnectException: Connection refused", True),
        ("java.net.SocketTimeoutException: Read timed out", True),
        ("java.net.SocketException: Connection reset", False),  # a crashed Python worker's too
        ("software.amazon.awssdk.services.s3.model.S3Exception: Please reduce your request rate. (Service: S3, "
         "Status Code: 503, Request ID: X)", True),
        ("software.amazon.awssdk.services.s3.model.S3Exception: Access Denied (Service: S3, Status Code: 403)", False),
        ("software.amazon.awssdk.core.exception.SdkClientException: Unable to load credentials from any provider",
         False),
        ("org.apache.hadoop.fs.s3a.AWSClientIOException: getFileStatus on s3a://crm/x: Unable to execute HTTP request",
         True),
        ("org.apache.spark.SparkException: Malformed CSV record: b,Disconnected,Male,connect timeout", False),
        ("java.io.FileNotFoundException: File file:/data/unreachable-connect.csv does not exist", False),
    ],
)
def test_sparks_errors_are_read_by_their_exception_class(line, later):
    assert _jvm_unreachable(line) is later


def test_an_s3_key_keeps_its_hash_and_question_mark():
    assert object_store.split("s3://crm/scores/week#45.parquet") == ("crm", "scores/week#45.parquet")
    assert object_store.split("s3://crm/scores/a?b.parquet") == ("crm", "scores/a?b.parquet")
