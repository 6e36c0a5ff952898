"""`pennello node` and Ray's fixed start window (docs/cluster.md), without a cluster or Ray itself.

Ray 2.60 gives a starting head or node 30 s to register with the head's GCS, hard-coded with no
setting; a loaded machine misses it now and then. `pennello node` starts Ray again when Ray says
so, and only then. A stand-in for `ray start` (a real process) fails the way Ray does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pennello.daemon.cluster import nodes


def test_a_node_that_missed_rays_start_window_is_started_again_and_no_other_failure_is(tmp_path: Path,
                                                                                       caplog) -> None:
    tries = tmp_path / "tries"
    stand_in = tmp_path / "ray-start.py"  # argv[1]: misses "once", "never" starts, or fails for an "other" reason
    stand_in.write_text(f"""import pathlib, sys
tries = pathlib.Path({str(tries)!r})
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
if sys.argv[1] == "other":
    sys.exit("InvalidAuthToken")
if sys.argv[1] == "never" or tries.read_text() == "x":
    sys.exit("Exception: The current node timed out during startup. This could happen because some of "
             "the raylet failed to startup or the GCS has become overloaded.")
""")
    env, stopped = {**os.environ, "HOME": str(tmp_path)}, []  # HOME: Ray's bootstrap config goes there
    for how, code, started in (("once", 0, 2), ("never", 1, nodes.START_TRIES), ("other", 1, 1)):
        tries.unlink(missing_ok=True)
        with caplog.at_level("WARNING"):
            assert nodes.run([sys.executable, str(stand_in), how], tmp_path / "token", env, lambda _: None,
                             stopped.append) == code
        assert len(tries.read_text()) == started, how
    assert len(stopped) == 1 + (nodes.START_TRIES - 1)  # what each missed start left behind was stopped
    assert "did not register with the head within the 30 s Ray allows" in caplog.text
    assert "starting Ray again (try 2 of 3)" in caplog.text
