"""One caller's failure stays that caller's, and a shutdown or a dying worker loses nothing.

Each test reproduces a failure seen on main with real parts: the engine on the embedded model,
a real waitress server on loopback with ``requests``, and ``pennello serve`` as a real process
that is signalled and whose model worker is killed.
"""

from __future__ import annotations

import pytest
import requests

from pennello.daemon import GenerateRequest
from _fixtures_daemon import SLOW_STEPS, wait_until_running

MARKER = "a prompt the text encoder cannot take"


# --- one caller's prompt must not fail its batch mates -------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_text_that_is_not_unicode_is_refused_naming_the_field(server, field):
    # json.dumps writes the lone surrogate as the escape "\ud800", as any JSON client may.
    body = {"prompt": "a red kite", field: "a kite \ud800 in the rain"}
    response = requests.post(server.api("/generate"), json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field and "not valid Unicode" in error["message"]
    assert "character 7" in error["message"]
    assert server.engine.jobs() == []


def test_a_failing_job_in_a_batch_fails_alone(engine, monkeypatch):
    pipe = engine.residency.loaded["pennello-tiny"].pipe
    encode = pipe.encode_prompt

    def refuse_marker(prompt, *args, **kwargs):  # as a tokenizer raising on one caller's text
        if any(MARKER in text for text in prompt):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return encode(prompt, *args, **kwargs)

    monkeypatch.setattr(pipe, "encode_prompt", refuse_marker)
    blocker = engine.submit(GenerateRequest(prompt="busy", steps=SLOW_STEPS))
    wait_until_running(blocker)
    mates = [engine.submit(GenerateRequest(prompt="kite 0", seed=1, owner="phone")),
             engine.submit(GenerateRequest(prompt=MARKER, seed=2, owner="laptop")),
             engine.submit(GenerateRequest(prompt="kites", seed=3, n=2, owner="tablet"))]
    for job in [blocker, *mates]:
        assert job.wait(120), f"job {job.id} did not end"
    good, bad, two = mates
    assert [good.batch_size, bad.batch_size, two.batch_size] == [4, 4, 4]  # they did share a call
    assert bad.status == "failed" and "TextEncodeInput" in bad.error and bad.images == []
    for job in (good, two):
        assert job.status == "done", job.error
        assert len(job.images) == job.request.n and all(image.path.is_file() for image in job.images)
        assert job.step == job.total_steps and job.progress == 1.0
    assert [image.seed for image in two.images] == [3, 4]
