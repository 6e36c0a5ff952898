"""The web page as an app: deleting pictures over the API, then every feature of the page driven in
a real headless Chromium, on a phone and a desktop screen, in light and dark."""

from __future__ import annotations

import threading

import requests


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
