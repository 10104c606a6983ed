"""Real counterparts for the bridge tests: Debian's mosquitto broker on 127.0.0.1 (started per test)."""

from __future__ import annotations

import pytest

from .helpers import MOSQUITTO, Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (Debian package 'mosquitto'; deploy/ci/system-deps.sh installs it)")
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()
