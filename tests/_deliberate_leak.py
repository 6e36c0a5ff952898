"""``pennello`` with a deliberate leak, for tests/test_netns.py only.

Runs the real CLI (``python tests/_deliberate_leak.py serve --lan --port 0``). Once the daemon
serves, a thread inside it does what a careless dependency might: a huggingface_hub call that
ignores HF_HUB_OFFLINE, and a raw TCP connect to ``$LEAK_TARGET``. What happened is written to
``$PENNELLO_HOME/leak.json``; the daemon itself is left untouched.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path


def leak(home: Path, target: str) -> None:
    daemon_file = home / "run" / "daemon.json"
    while not daemon_file.exists():
        time.sleep(0.1)
    results: dict[str, str] = {}
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False  # as if the library ignored the environment
    from huggingface_hub import HfApi

    try:
        HfApi().model_info("stabilityai/sd-turbo")
        results["huggingface_hub"] = "reached the Hub"
    except Exception as e:  # noqa: BLE001 - whatever it is, record it
        results["huggingface_hub"] = f"{type(e).__name__}: {e}"
    try:
        socket.create_connection((target, 443), timeout=3).close()
        results["tcp"] = f"connected to {target}:443"
    except OSError as e:
        results["tcp"] = f"{type(e).__name__}: {e}"
    (home / "leak.json").write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    threading.Thread(target=leak, args=(Path(os.environ["PENNELLO_HOME"]), os.environ["LEAK_TARGET"]),
                     daemon=True).start()
    from pennello.cli import main

    sys.argv = ["pennello", *sys.argv[1:]]
    main()
