"""The database password from a secret file (Docker secrets, systemd credentials), not the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from storage.settings import StorageSettings


def test_password_file_goes_into_the_url_quoted(tmp_path, monkeypatch):
    secret = tmp_path / "postgres_password"
    secret.write_text("p@ss/w:rd%\n")  # as `openssl rand` or an editor leaves it: a trailing newline
    monkeypatch.setenv("LINEWATCH_DATABASE_URL", "postgresql+psycopg://linewatch@postgres:5432/linewatch")
    monkeypatch.setenv("LINEWATCH_DATABASE_PASSWORD_FILE", str(secret))
    url = make_url(StorageSettings().url)
    assert (url.username, url.password, url.host, url.database) == ("linewatch", "p@ss/w:rd%", "postgres", "linewatch")


def test_a_missing_password_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEWATCH_DATABASE_URL", "postgresql+psycopg://linewatch@postgres/linewatch")
    monkeypatch.setenv("LINEWATCH_DATABASE_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="LINEWATCH_DATABASE_PASSWORD_FILE: cannot read .*nope"):
        StorageSettings()


def test_an_empty_password_file_means_no_password(tmp_path, monkeypatch):
    """The systemd units' default credential (one empty line) when /etc/linewatch/db-password is
    not installed (SQLite, or a database that needs none): the URL is left as it is."""
    empty = tmp_path / "db-password"
    empty.write_text("\n")  # what SetCredential=db-password:\n gives
    monkeypatch.setenv("LINEWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LINEWATCH_DATABASE_PASSWORD_FILE", str(empty))
    assert StorageSettings().url == f"sqlite:///{tmp_path.resolve() / 'linewatch.db'}"
    monkeypatch.setenv("LINEWATCH_DATABASE_URL", "postgresql+psycopg://linewatch:inline@db/linewatch")
    assert make_url(StorageSettings().url).password == "inline"
