"""S3 addresses and failures: one reading of each for every job that touches the object store."""

from __future__ import annotations

import re

from churn_platform.errors import DataSourceError

#: The AWS SDK's names (quoted by pyarrow's errors) for a store that did not answer or asked to
#: be asked later, and any 5xx it answered with.
_SDK_LATER = re.compile(
    r"AWS Error (?:NETWORK_CONNECTION|SERVICE_UNAVAILABLE|SLOW_DOWN|THROTTLING|INTERNAL_FAILURE|REQUEST_TIMEOUT)\b"
    r"|AWS Error \w+ \(HTTP status 5\d\d\)"
)
#: S3's error codes (boto3's ``ClientError``) for the same.
_LATER_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                          "ThrottlingException", "RequestLimitExceeded"})  # fmt: skip


def split(uri: str) -> tuple[str, str]:
    """An ``s3://bucket/key`` URI's bucket and key, as S3 reads them: ``#`` and ``?`` belong to
    the key (a URL parser cut ``week#45.parquet`` to ``week``, where a job's rejects then
    overwrote its scores)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def check_address(uri: str, what: str) -> None:
    """Refuse, before any work, an ``s3://`` address pyarrow cannot use: no bucket (``s3:///x``,
    a variable left unset) or an empty path component (``s3://b/data//x``, a folder setting
    ending in ``/``). pyarrow refused them with a ValueError once it got there: a traceback,
    or an upload failing after the whole input was scored."""
    bucket, key = split(uri)
    if not bucket:
        raise DataSourceError(f"{what} {uri} names no bucket: want s3://bucket/key")
    if "//" in key or key.startswith("/"):
        raise DataSourceError(f"{what} {uri} has an empty path component ('//'), which pyarrow cannot address: "
                              "remove the doubled '/' (a folder setting that ends in '/'?)")  # fmt: skip


def unreachable(exc: BaseException) -> bool:
    """Did the store not answer, or ask to be asked later (worth a retry: exit 3)? Read from the
    error's type or the SDK's error name, never from loose words in its message, which also
    quotes the user's paths, buckets and rows: a CSV row holding "Disconnected" read as an
    outage, and the job re-scored the whole input on each retry."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ConnectionError | TimeoutError | BotoConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return exc.response.get("Error", {}).get("Code") in _LATER_CODES or status >= 500
    if isinstance(exc, S3UploadFailedError):  # boto3 wraps the upload's ClientError
        return exc.__context__ is not None and unreachable(exc.__context__)
    return isinstance(exc, OSError) and _SDK_LATER.search(str(exc)) is not None
