"""Blob stores: local directory (default) and database."""

from __future__ import annotations

import pytest

from storage.blobs import BlobNotFound, DatabaseBlobStore, LocalBlobStore, make_blob_store


@pytest.fixture(params=["local", "database"])
def store(request, storage_db):
    if request.param == "local":
        return LocalBlobStore(storage_db.settings.blob_dir)
    return DatabaseBlobStore(storage_db.engine)


def test_put_get_delete(store):
    store.put("heatmaps/2026/11/23/cam-1/a.png", b"\x89PNGdata", "image/png")
    store.put("frames/b.jpg", b"jpeg", "image/jpeg")
    store.flush()
    assert store.get("heatmaps/2026/11/23/cam-1/a.png") == b"\x89PNGdata"
    assert store.exists("frames/b.jpg") and not store.exists("frames/c.jpg")
    assert sorted(store.iter_keys()) == ["frames/b.jpg", "heatmaps/2026/11/23/cam-1/a.png"]
    store.put("frames/b.jpg", b"jpeg", "image/jpeg")  # same key again: harmless
    store.delete("frames/b.jpg")
    store.delete("frames/b.jpg")  # missing: not an error
    with pytest.raises(BlobNotFound):
        store.get("frames/b.jpg")
    assert list(store.iter_keys()) == ["heatmaps/2026/11/23/cam-1/a.png"]


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a\\b", "./a"])
def test_keys_cannot_escape(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x", "image/png")


def test_factory(sqlite_db):
    assert isinstance(make_blob_store(sqlite_db.settings), LocalBlobStore)
    s = sqlite_db.settings.model_copy(update={"blob_store": "database"})
    assert isinstance(make_blob_store(s, sqlite_db.engine), DatabaseBlobStore)
