"""The web page's picture routes over HTTP, as the page and a paired device call them: a device
deletes its own pictures and no one else's (``DELETE /api/images/<id>``), and sees the picture
so far of its own running job (``GET /api/jobs/<id>/preview``). The page itself, driven in a real
Chromium, is tests/test_web_app.py."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import requests
from PIL import Image


def _pair(owner_url: str, device_url: str, name: str) -> dict[str, str]:
    code = requests.post(f"{owner_url}/api/pair/code").json()["code"]
    response = requests.post(f"{device_url}/api/pair", json={"code": code, "name": name})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def _draw(url: str, headers: dict[str, str] | None = None) -> dict:
    job = requests.post(f"{url}/api/generate", json={"prompt": "a red square", "wait": True}, headers=headers)
    assert job.status_code == 200, job.text
    return job.json()["images"][0]


# --- DELETE /api/images/<id> -------------------------------------------------------------------------

def test_a_device_deletes_its_own_pictures_and_no_one_elses(api_server, api_engine):
    url, lan = api_server(lan=True)
    tablet, phone = _pair(url, lan, "tablet"), _pair(url, lan, "phone")
    mine, owners = _draw(lan, tablet), _draw(url)
    path = api_engine.outputs.find(mine["id"])

    for other, target in ((phone, mine), (tablet, owners)):  # someone else's: as if it did not exist
        refused = requests.delete(f"{lan}/api/images/{target['id']}", headers=other)
        assert refused.status_code == 404 and refused.json()["error"]["field"] == "id"
    assert path.is_file() and requests.get(f"{lan}/api/images/{mine['id']}", headers=tablet).status_code == 200

    deleted = requests.delete(f"{lan}/api/images/{mine['id']}", headers=tablet)
    assert deleted.status_code == 200 and deleted.json() == {"id": mine["id"], "deleted": True}
    assert not path.exists()
    assert requests.get(f"{lan}/api/images/{mine['id']}", headers=tablet).status_code == 404
    gallery = requests.get(f"{lan}/api/outputs", headers=tablet).json()["images"]
    assert mine["id"] not in {record["id"] for record in gallery}
    assert requests.delete(f"{lan}/api/images/{mine['id']}", headers=tablet).status_code == 404

    # The owner may delete any picture, a device's too.
    theirs = _draw(lan, phone)
    assert requests.delete(f"{url}/api/images/{theirs['id']}").status_code == 200
    assert requests.delete(f"{url}/api/images/{owners['id']}").status_code == 200


def test_deleting_needs_a_token_and_a_real_id(api_server):
    url, lan = api_server(lan=True)
    picture = _draw(url)
    anonymous = requests.delete(f"{lan}/api/images/{picture['id']}")
    assert anonymous.status_code == 401 and "pair" in anonymous.json()["error"]["message"]
    for bad in ("nope", "99999999-000000-000000-00000000", "../../etc"):
        answer = requests.delete(f"{url}/api/images/{bad}")
        assert answer.status_code == 404 and answer.headers["Content-Type"] == "application/json", bad


def test_two_deletes_at_once_remove_the_picture_once(api_server):
    url = api_server()
    picture = _draw(url)
    barrier, codes = threading.Barrier(4), []

    def delete() -> None:
        barrier.wait()
        codes.append(requests.delete(f"{url}/api/images/{picture['id']}").status_code)

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes) == [200, 404, 404, 404]


# --- GET /api/jobs/<id>/preview -------------------------------------------------------------------------

def _preview(url: str, job_id: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(f"{url}/api/jobs/{job_id}/preview", headers=headers, timeout=60)


def test_a_running_job_previews_for_its_device_and_the_owner_only(api_server):
    url, lan = api_server(lan=True)
    tablet, phone = _pair(url, lan, "tablet"), _pair(url, lan, "phone")
    job = requests.post(f"{lan}/api/generate", json={"prompt": "a red circle", "steps": 100, "seed": 1},
                        headers=tablet).json()
    deadline, seen = time.monotonic() + 60, None
    while seen is None:
        assert time.monotonic() < deadline, "never saw a preview"
        answer = _preview(lan, job["id"], tablet)
        assert answer.status_code in (200, 204), answer.text
        if answer.status_code == 200:
            seen = answer
        time.sleep(0.02)
    owners, others = _preview(url, job["id"]), _preview(lan, job["id"], phone)
    requests.delete(f"{lan}/api/jobs/{job['id']}", headers=tablet)
    ended = requests.get(f"{lan}/api/jobs/{job['id']}", headers=tablet).json()
    deadline = time.monotonic() + 60
    while ended["status"] == "running":
        assert time.monotonic() < deadline, "the job never stopped"
        ended = requests.get(f"{lan}/api/jobs/{job['id']}", headers=tablet).json()
    assert seen.headers["Content-Type"] == "image/png" and seen.headers["Cache-Control"] == "no-store"
    picture = np.asarray(Image.open(io.BytesIO(seen.content)).convert("RGB"))
    assert picture.shape == (64, 64, 3) and picture.std() > 0  # a decoded picture, not a flat fill
    assert owners.status_code == 200 and owners.headers["Content-Type"] == "image/png"  # the owner may look
    assert others.status_code == 404 and others.json()["error"]["field"] == "id"  # as if it did not exist
    assert _preview(lan, job["id"], tablet).status_code == 204  # ended: nothing to preview
    unknown = _preview(url, "no-such-job")
    assert unknown.status_code == 404 and unknown.headers["Content-Type"] == "application/json"
