from tests.storage.fixtures import postgres_url, sqlite_db, storage_backend, storage_db  # noqa: F401
