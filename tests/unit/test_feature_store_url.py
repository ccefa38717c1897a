"""CHURN_FEATURE_STORE_URL's options reach every connection the feature store opens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from psycopg.conninfo import conninfo_to_dict

from churn_platform import feature_store
from churn_platform.errors import SettingsError
from churn_platform.settings import Settings

URL = "postgresql://u:p@db:5432/features?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem&sslcert=/c.pem&sslkey=/k.pem"


def test_the_tls_files_reach_feasts_connections_ours_and_the_apis():
    """Only sslmode was kept: with verify-full and a private CA, libpq looked for
    ~/.postgresql/root.crt and every command was "feature store unavailable", exit 3."""
    repo = feature_store.config(Settings(feature_store_url=URL))
    for store in (repo.online_store, repo.offline_store):
        assert (store.sslmode, store.sslrootcert_path, store.sslcert_path, store.sslkey_path) == (
            "verify-full", "/etc/ssl/rds.pem", "/c.pem", "/k.pem"
        )
    engine_url = feature_store._url(feature_store._postgres(URL), "postgresql+psycopg2")  # noqa: SLF001
    assert {k: v for k, v in engine_url.query.items() if k.startswith("ssl")} == {
        "sslmode": "verify-full", "sslrootcert": "/etc/ssl/rds.pem", "sslcert": "/c.pem", "sslkey": "/k.pem"
    }  # fmt: skip
    registry = conninfo_to_dict(repo.registry.path.replace("postgresql+psycopg://", "postgresql://"))
    tls = {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/rds.pem", "sslcert": "/c.pem", "sslkey": "/k.pem"}
    assert {k: v for k, v in registry.items() if k.startswith("ssl")} == tls

    class Store:  # what the API's reader asks of Feast's store: the view's table name, the key version
        config = SimpleNamespace(entity_key_serialization_version=3)

        def get_feature_view(self, name: str) -> SimpleNamespace:
            return SimpleNamespace(name=name)

    reader = feature_store.PostgresOnlineReader(Store(), Settings(feature_store_url=URL))  # type: ignore[arg-type]
    api = conninfo_to_dict(reader._conninfo)  # noqa: SLF001 - the by-id routes' connection
    assert {k: v for k, v in api.items() if k.startswith("ssl")} == tls


def test_an_option_no_connection_takes_is_refused_by_name():
    with pytest.raises(SettingsError, match=r"take only the options sslmode, sslrootcert, sslcert, sslkey; "
                                            r"not application_name, connect_timeout"):  # fmt: skip
        feature_store._postgres("postgresql://u:p@db/f?connect_timeout=3&application_name=x")  # noqa: SLF001
