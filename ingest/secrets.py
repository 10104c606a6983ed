"""Passwords read from files: Docker secrets (``/run/secrets/...``) and systemd credentials
(``$CREDENTIALS_DIRECTORY/...``, ``%d/...`` in a unit), never the environment.

Each ``LINEWATCH_*_PASSWORD_FILE`` setting names such a file.  One trailing line break is
dropped (``openssl rand`` and editors leave one); an empty file gives no password (the setting's
inline ``*_PASSWORD``, when one is set), which is what the systemd units hand over when the
credential's file is not installed.  A file that cannot be
read is an error naming the setting, so a wrong path fails at start-up, not at the first login.
"""

from __future__ import annotations

from pathlib import Path


def read_secret_file(path: Path, variable: str) -> str:
    """The secret in ``path`` without its trailing line break; ``variable`` names the setting in errors."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise ValueError(f"{variable}: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{variable}: {path} is not UTF-8 text") from None


def password_setting(file: Path | None, variable: str, value: str | None) -> str | None:
    """The password a ``*_PASSWORD`` / ``*_PASSWORD_FILE`` pair gives: the file's when it is set and
    not empty, else ``value``."""
    if file is None:
        return value
    return read_secret_file(file, variable) or value
