"""kitlib.models.hub: a TF-Hub / Kaggle Models handle resolved to a local SavedModel, offline first, failing fast."""

import hashlib
import os
import socket
import time

import pytest

from kitlib.models import backbones, hub


def _fake_saved_model(folder):
    """A folder that looks like a TF2 SavedModel to the resolver (it only checks for saved_model.pb)."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "saved_model.pb"), "wb").close()
    return str(folder)

def test_unreachable_handle_fails_fast_with_advice(tmp_path):
    probed = []

    def offline(host):
        probed.append(host)
        return False

    start = time.monotonic()
    with pytest.raises(ValueError, match="Add Input.*Models.*local directory"):
        backbones.load("https://tfhub.dev/google/bit/m-r50x1/1", cache_dir=str(tmp_path),
                       input_root=str(tmp_path), reachable=offline)
    assert probed == ["tfhub.dev"]  # one probe, no retries
    with pytest.raises(ValueError, match="unreachable"):
        hub.resolve_backbone("google/bit/tensorFlow2/m-r50x1", cache_dir=str(tmp_path),
                             input_root=str(tmp_path), reachable=offline)
    assert probed[-1] == "www.kaggle.com"
    with pytest.raises(ValueError, match="unreachable"):
        hub.resolve_backbone("gs://my-bucket/bit_m-r50x1.tar.gz", cache_dir=str(tmp_path), reachable=offline)
    assert probed[-1] == "storage.googleapis.com"
    assert time.monotonic() - start < 5

def test_default_network_probe_is_one_connect_with_a_short_timeout(monkeypatch):
    calls = []

    def refuse(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert hub.can_connect("tfhub.dev") is False
    assert calls == [(("tfhub.dev", 443), hub.PROBE_TIMEOUT_S)] and hub.PROBE_TIMEOUT_S <= 5

def test_attached_kaggle_model_and_hub_cache_are_used_without_the_network(tmp_path):
    def no_network(host):
        raise AssertionError("the network must not be probed when a local copy exists")

    attached = _fake_saved_model(tmp_path / "input" / "bit" / "tensorflow2" / "m-r50x1" / "1")
    for handle in ("google/bit/tensorFlow2/m-r50x1", "https://tfhub.dev/google/bit/m-r50x1/1",
                   "https://www.kaggle.com/models/google/bit/TensorFlow2/m-r50x1/1"):
        assert hub.resolve_backbone(handle, cache_dir=str(tmp_path), input_root=str(tmp_path / "input"),
                                    reachable=no_network) == attached

    url = "https://tfhub.dev/google/bit/s-r50x1/1"
    cached = _fake_saved_model(tmp_path / "cache" / hashlib.sha1(url.encode()).hexdigest())  # tensorflow_hub's layout
    assert hub.resolve_backbone(url, cache_dir=str(tmp_path / "cache"), input_root=str(tmp_path / "input"),
                                reachable=no_network) == cached

def test_local_paths_that_are_not_savedmodels_fail_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="saved_model.pb"):
        hub.resolve_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="no such directory"):
        hub.resolve_backbone(str(tmp_path / "missing"))
