"""S3 addresses and failures: one reading of each for every job that touches the object store."""

from __future__ import annotations

import re

from churn_platform.errors import DataSourceError

#: HTTP statuses that mean "later": too many requests, and the 5xx a busy or failing-over store
#: answers (not 501 or 507: a feature it lacks, or a full disk, stay so on a retry).
LATER_STATUS = frozenset({429, 500, 502, 503, 504})
#: The same as a regular expression's alternatives, for errors that quote the status in text.
LATER_STATUS_TEXT = "|".join(map(str, sorted(LATER_STATUS)))
#: The AWS SDK's names (quoted by pyarrow's errors) for a store that did not answer or asked to
#: be asked later, or such a status under another name.
_SDK_LATER = re.compile(
    r"AWS Error (?:NETWORK_CONNECTION|SERVICE_UNAVAILABLE|SLOW_DOWN|THROTTLING|INTERNAL_FAILURE|REQUEST_TIMEOUT)\b"
    rf"|AWS Error \w+ \(HTTP status (?:{LATER_STATUS_TEXT})\)"
)
#: S3's error codes (boto3's ``ClientError``) for the same.
_LATER_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                          "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"})  # fmt: skip


def split(uri: str) -> tuple[str, str]:
    """An ``s3://bucket/key`` URI's bucket and key, as S3 reads them: ``#`` and ``?`` belong to
    the key (a URL parser cut ``week#45.parquet`` to ``week``, where a job's rejects then
    overwrote its scores)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def check_address(uri: str, what: str, *, pyarrow: bool = False) -> None:
    """Refuse, before any work, an ``s3://`` address without a bucket (``s3:///x``, a variable
    left unset), and with ``pyarrow`` (which reads it, or stages it) one with an empty path
    component (``s3://b/data//x``, a folder setting ending in ``/``), which S3 and boto3 take.
    pyarrow refused them with a ValueError once it got there: a traceback, or an upload
    failing after the whole input was scored."""
    bucket, key = split(uri)
    if not bucket:
        raise DataSourceError(f"{what} {uri} names no bucket: want s3://bucket/key")
    if pyarrow and ("//" in key or key.startswith("/")):
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

    # Credential errors are not here: botocore raises the same ones for a provider that is away
    # and for one that is misconfigured for good (an expired SSO session, IMDSv1 disabled).
    if isinstance(exc, ConnectionError | TimeoutError | BotoConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return exc.response.get("Error", {}).get("Code") in _LATER_CODES or status in LATER_STATUS
    if isinstance(exc, S3UploadFailedError):  # boto3 wraps the upload's ClientError
        return exc.__context__ is not None and unreachable(exc.__context__)
    return isinstance(exc, OSError) and _SDK_LATER.search(str(exc)) is not None
