"""Installing a model from the web page's API: the plan, the owner's consent, progress, done, the
model listed and loaded; cancel and failure leave the store as it was; who and when is refused.

The stand-in model is the embedded pennello-tiny's files plus a few MB of padding of its own
(new bytes, so there is something to download), signed by a key trusted in the daemon's home
and served by a real HTTP mirror on loopback; the daemon runs the real ``pennello install``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from _fixtures_hub import shipped_manifest
from _fixtures_installer import KEY_NAME, Mirror, _handler, _serving, make_manifest, store_listing
from pennello.installer.manifest import Manifest, Source, dump_envelope
from test_openapi import _check  # real answers against the OpenAPI description's schemas

TINY = Path(__file__).resolve().parents[1] / "installer" / "embedded" / "pennello-tiny"
PAD = "extra/padding.bin"  # not a pipeline component: diffusers leaves it alone


@dataclass
class StandIn:
    """A mirror on loopback; ``offer(name)``: a new catalog model served from it; ``list(manifest)``:
    any manifest signed into the daemon's catalog."""

    mirror: Mirror
    offer: Callable[..., str]
    list: Callable[[Manifest], str]


@pytest.fixture(scope="module")
def stand_in(api_engine) -> Iterator[StandIn]:
    from pennello.installer.catalog import Catalog
    from pennello.installer.keys import generate_key, load_private_key, sign_signed

    home = api_engine.paths
    generate_key(home, KEY_NAME)
    key = load_private_key(KEY_NAME, home)
    tiny = {p.relative_to(TINY).as_posix(): p.read_bytes() for p in sorted(TINY.rglob("*")) if p.is_file()}
    state = Mirror()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True

    def offer(name: str, pad_mb: float = 2, pace_s: float = 0.0) -> str:
        """Sign and list ``name`` in the daemon's catalog; its padding is sent at ``pace_s`` per 64 KiB."""
        files = {**tiny, PAD: os.urandom(int(pad_mb * 1_000_000))}
        state.files.update({f"{name}/{path}": data for path, data in files.items()})
        if pace_s:
            state.pace[f"{name}/{PAD}"] = pace_s
        manifest = make_manifest(name, files, source=Source("mirror", base_url=f"{state.url}/{name}"))
        return listed(dataclasses.replace(manifest, pipeline=shipped_manifest("pennello-tiny").pipeline))

    def listed(manifest: Manifest) -> str:
        signed = manifest.to_signed()
        Catalog(home).write_user(manifest.name, dump_envelope(signed, [sign_signed(signed, key)]))
        return manifest.name

    with _serving(server, state):
        yield StandIn(state, offer, listed)


def _install(url: str, name: str, **body: Any) -> requests.Response:
    return requests.post(f"{url}/api/models/{name}/install", json=body or None, timeout=120)


def _until(url: str, name: str, done: Callable[[dict], bool], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = requests.get(f"{url}/api/models/{name}/install", timeout=30).json()
        if done(state):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_plan_then_consent_then_progress_then_the_model_is_installed_and_loads(api_server, api_engine, stand_in,
                                                                              tmp_path, monkeypatch):
    url = api_server(offline=False)
    # A pennello/ folder where the daemon runs (a checkout next to an install) must not stand in
    # for the package in the installer's process.
    (tmp_path / "pennello").mkdir()
    (tmp_path / "pennello" / "__init__.py").write_text("raise ImportError('the pennello/ of the current directory')")
    monkeypatch.chdir(tmp_path)
    name, other = stand_in.offer("stand-in", pace_s=0.03), stand_in.offer("stand-in-two")
    before = store_listing(api_engine.paths)
    assert requests.get(f"{url}/api/models/{name}/install").status_code == 404  # none started yet

    planned = _install(url, name)
    assert planned.status_code == 200, planned.text
    plan = planned.json()
    _check(plan, "InstallPlanned")
    assert plan["state"] == "planned" and "consent" in plan["consent"]
    assert plan["plan"]["models"] == [{"name": name, "version": 1, "license": "Apache-2.0"}]
    assert plan["plan"]["bytes"] >= 2_000_000 and plan["plan"]["files"] >= 1
    assert plan["plan"]["sources"] == [f"{stand_in.mirror.url}/{name}"]
    assert store_listing(api_engine.paths) == before  # a plan changes nothing
    assert name not in {m["name"] for m in requests.get(f"{url}/api/models").json()["models"]}

    started = _install(url, name, consent=True)
    assert started.status_code == 202 and started.headers["Location"] == f"/api/models/{name}/install"
    assert started.json()["state"] == "running"
    _check(started.json(), "Install")
    busy = _install(url, other, consent=True)  # one at a time
    assert busy.status_code == 409 and busy.json()["error"]["type"] == "conflict"
    _check(busy.json(), "Error")
    assert name in busy.json()["error"]["message"]
    midway = _until(url, name, lambda s: 0 < s["bytes"] < s["total"])
    assert midway["state"] == "running" and midway["total"] == plan["plan"]["bytes"]
    done = _until(url, name, lambda s: s["state"] != "running")
    assert done["state"] == "done", done
    _check(done, "Install")
    assert done["models"][0]["name"] == name and done["bytes"] == done["total"] and done["error"] is None

    listed = {m["name"]: m for m in requests.get(f"{url}/api/models").json()["models"]}
    assert listed[name]["verification"] == "signed hashes"
    loaded = requests.post(f"{url}/api/models/{name}/load", timeout=120)
    assert loaded.status_code == 200 and loaded.json()["name"] == name
    requests.post(f"{url}/api/models/{name}/unload")


def test_a_cancelled_or_failed_install_leaves_the_store_as_it_was(api_server, api_engine, stand_in):
    url = api_server(offline=False)
    slow, broken = stand_in.offer("stand-in-slow", pad_mb=3, pace_s=0.05), stand_in.offer("stand-in-broken")
    # Other bytes of the same size: they arrive whole, and their sha256 is not the signed one.
    stand_in.mirror.substitute[f"{broken}/{PAD}"] = os.urandom(len(stand_in.mirror.files[f"{broken}/{PAD}"]))
    before = store_listing(api_engine.paths)

    assert _install(url, slow, consent=True).status_code == 202
    _until(url, slow, lambda s: s["bytes"] > 0)
    assert requests.delete(f"{url}/api/models/{slow}/install").json()["name"] == slow
    cancelled = _until(url, slow, lambda s: s["state"] != "running")
    assert cancelled["state"] == "cancelled" and cancelled["error"]["type"] == "cancelled", cancelled
    _check(cancelled, "Install")
    assert store_listing(api_engine.paths) == before

    assert _install(url, broken, consent=True).status_code == 202  # the last one ended: not busy
    failed = _until(url, broken, lambda s: s["state"] != "running")
    assert failed["state"] == "failed" and failed["error"]["type"] == "integrity", failed
    assert PAD in failed["error"]["error"]
    assert store_listing(api_engine.paths) == before
    names = {m["name"] for m in requests.get(f"{url}/api/models").json()["models"]}
    assert not {slow, broken} & names


def test_an_install_still_running_when_the_daemon_exits_is_stopped(api_engine, stand_in):
    from pennello.daemon.tools.installs import Installs

    installs = Installs(api_engine.paths)  # as the daemon's app holds it; stop() runs at exit
    slow = stand_in.offer("stand-in-orphan", pad_mb=3, pace_s=0.05)
    before = store_listing(api_engine.paths)
    install = installs.start(slow)
    deadline = time.monotonic() + 60
    while install.bytes == 0:
        assert time.monotonic() < deadline and install.state == "running", install.to_dict()
        time.sleep(0.05)
    process = installs._process
    installs.stop()
    assert process is not None and process.poll() is not None  # no orphan writing the store
    while install.state == "running":  # its reader thread sees the exit
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert install.state == "cancelled", install.to_dict()
    assert store_listing(api_engine.paths) == before
    installs.stop()  # nothing running: a no-op


def test_a_source_without_the_commits_git_objects_needs_consent_to_first_fetch_too(api_server, stand_in, hub,
                                                                                   monkeypatch):
    import json

    from test_gitpin import FILES, LFS, REPO

    url = api_server(offline=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the installer's process inherits the daemon's environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    commit = hub.publish(REPO, FILES, LFS)
    del hub.repos[REPO]  # the files are still served, the git endpoint is not
    hub.files[f"api/models/{REPO}/tree/{commit}"] = json.dumps(
        [{"type": "file", "path": p, "size": len(d), "oid": "0" * 40} for p, d in FILES.items()]).encode()
    name = stand_in.list(make_manifest("stand-in-tofu", {}, source=Source("huggingface", repo=REPO, revision=commit),
                                       locked=False))

    planned = _install(url, name).json()
    _check(planned, "InstallPlanned")
    assert f"does not serve the git objects of commit {commit}" in planned["plan"]["first_fetch"]
    assert planned["plan"]["bytes"] is None and '"first_fetch": true' in planned["consent"]
    assert not [path for path in hub.requests if "/resolve/" in path]  # the plan downloaded nothing

    assert _install(url, name, consent=True).status_code == 202  # the download, not first fetch
    refused = _until(url, name, lambda s: s["state"] != "running")
    assert refused["state"] == "failed" and refused["error"]["type"] == "consent", refused
    assert not [path for path in hub.requests if "/resolve/" in path]
    assert _install(url, name, consent=True, first_fetch=True).status_code == 202
    assert _until(url, name, lambda s: s["state"] != "running")["state"] == "done"
    listed = {m["name"]: m for m in requests.get(f"{url}/api/models").json()["models"]}
    assert listed[name]["verification"] == "first fetch"


def _pair(url: str, lan: str) -> dict[str, str]:
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    token = requests.post(f"{lan}/api/pair", json={"code": code, "name": "tablet"}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_who_and_when_an_install_is_refused(api_server, stand_in):
    name = stand_in.offer("stand-in-refused")
    url, lan = api_server(lan=True)  # no-network mode on, as a daemon has it by default
    tablet = _pair(url, lan)
    for method in ("POST", "GET", "DELETE"):
        refused = requests.request(method, f"{lan}/api/models/{name}/install", headers=tablet, json={})
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden", method
    offline = _install(url, name, consent=True)
    assert offline.status_code == 409 and offline.json()["error"]["type"] == "conflict"
    assert "no-network mode is on" in offline.json()["error"]["message"]
    assert "pennello install --from" in offline.json()["error"]["message"]  # the air-gapped way

    online = api_server(offline=False)
    unknown = _install(online, "no-such-model")
    assert unknown.status_code == 404 and "stand-in-refused" in unknown.json()["error"]["message"]
    wrong = _install(online, name, consent="yes")
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "consent"
    assert requests.delete(f"{online}/api/models/{name}/install").status_code == 404  # nothing to stop


def test_install_json_tells_the_plan_progress_and_the_end_as_lines(home, mirror, publish, monkeypatch):
    """The lines the daemon reads, from the command itself (in-process: the same click command)."""
    import json

    from click.testing import CliRunner

    from pennello.installer.catalog import Catalog
    from pennello.installer.cli import install

    files = {"model_index.json": b"{}", PAD: os.urandom(300_000)}
    mirror.files.update({f"tiny/{path}": data for path, data in files.items()})
    Catalog(home).write_user("tiny", publish(make_manifest(
        "tiny", files, source=Source("mirror", base_url=f"{mirror.url}/tiny"))))
    monkeypatch.setenv("PENNELLO_INSTALLER_CONFIRM_OVER_MB", "0")  # every download asks first
    runner = CliRunner()

    planned = runner.invoke(install, ["tiny", "--plan"])
    assert planned.exit_code == 0 and planned.output.startswith("to download: 2 files, 300.0 KB (licence tiny: Apache-2.0)")
    refused = runner.invoke(install, ["tiny", "--json"])  # no terminal, no --yes: refused
    assert [json.loads(line)["event"] for line in refused.stdout.splitlines()] == ["plan", "error"]
    assert refused.exit_code == 10 and json.loads(refused.stdout.splitlines()[-1])["type"] == "consent"
    assert store_listing(home) == {}  # neither changed anything

    done = runner.invoke(install, ["tiny", "--json", "--yes"])
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.exit_code == 0, done.output
    assert lines[0] == {"event": "plan", "files": 2, "bytes": 300_002, "sources": [f"{mirror.url}/tiny"],
                        "models": [{"name": "tiny", "version": 1, "license": "Apache-2.0"}], "first_fetch": None}
    assert {line["event"] for line in lines[1:-1]} == {"progress"}
    assert lines[-2] == {"event": "progress", "bytes": 300_002, "total": 300_002}
    assert lines[-1] == {"event": "done", "models": [{"name": "tiny", "version": 1, "size_bytes": 300_002}]}
