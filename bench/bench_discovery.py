"""Discovery benchmark: how soon a LAN daemon is found once it is advertised.

    sudo .venv/bin/python bench/bench_discovery.py      # writes bench/results/discovery.json
    .venv/bin/python bench/bench_discovery.py --rounds 5 # without root: both ends on this host

The advertiser (``pennello.daemon.net.mdns.Advertiser``, as ``serve --lan`` uses it) and the
browsers run in two network namespaces joined by a veth (tests/_fixtures_netns.py), so every
packet crosses a real link between two network stacks; without root both run on this host.

1. **registered → found**: a browser already running in the other namespace (a phone with the app
   open); from the moment the advertiser's probing ended and its record went live to the
   browser's "added" callback. Goal ≤ 1 s median.
2. **register called → found**: the same, including the conflict probing mDNS requires before a
   name may be used (RFC 6762 §8.1: 0–250 ms, then three probes 250 ms apart and 250 ms for a
   defence) — what ``serve --lan`` adds to start-up. Also held to ≤ 1 s.
3. **browse() → found**: ``pennello.client.discover.browse`` (as ``pennello discover`` and
   ``generate --remote`` use it) started while the daemon is already advertising, until it
   returns the daemon.

Times are ``time.monotonic()``, one clock for every process on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import percentile, row, write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the namespace helper the netns tests use

GOAL_MS = 1000.0


# --- roles, each run as its own process (inside a namespace when there are namespaces) ----------

def role_browser() -> None:
    """Print one JSON line per service added, until stdin closes."""
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    from pennello.lan import SERVICE_TYPE, zeroconf_interfaces

    choice, ip_version = zeroconf_interfaces(())
    zc = Zeroconf(interfaces=choice, ip_version=ip_version)
    lock = threading.Lock()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            with lock:
                print(json.dumps({"name": name.removesuffix("." + SERVICE_TYPE), "found": time.monotonic()}),
                      flush=True)

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()
    browser.cancel()
    zc.close()


def role_advertiser(rounds: int, hold_s: float) -> None:
    """Advertise a fresh daemon per round; print when start was called and when it went live.
    Then keep one advertised (its id on a line of its own) until stdin closes."""
    from pennello.daemon.net.mdns import Advertiser
    from pennello.paths import get_paths

    with tempfile.TemporaryDirectory() as tmp:
        def advertiser(i: int | str) -> Advertiser:
            return Advertiser(get_paths(Path(tmp) / str(i)).ensure(), 8420, "sha256:" + "ab" * 32,
                              lambda: (["pennello-tiny"], ["pennello-tiny"]), hostname=f"bench-{os.getpid()}-{i}")

        for i in range(rounds):
            adv = advertiser(i)
            called = time.monotonic()
            adv.start()
            print(json.dumps({"name": adv.name, "called": called, "registered": adv.registered_at}), flush=True)
            time.sleep(hold_s)
            adv.stop()
            time.sleep(0.3)
        steady = advertiser("steady")
        steady.start()
        print(json.dumps({"steady": steady.instance_id}), flush=True)
        sys.stdin.read()
        steady.stop()


def role_discover(instance: str, rounds: int) -> None:
    """Time ``browse()`` until it returns ``instance``, ``rounds`` times."""
    from pennello.client.discover import browse

    for _ in range(rounds):
        started = time.monotonic()
        found = browse(10.0, stop_when=lambda s: s.id == instance)
        took = time.monotonic() - started
        print(json.dumps({"ms": took * 1000, "found": any(s.id == instance for s in found)}), flush=True)
        time.sleep(0.2)


# --- the orchestra -------------------------------------------------------------------------------

def _spawn(prefix: list[str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, str(Path(__file__).resolve()), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _prefixes(namespaces: Any) -> tuple[list[str], list[str]]:
    """The command prefixes that run the advertiser's and the browsers' side: one namespace each,
    joined by a veth, or none (both on this host) when there are no namespaces."""
    if namespaces is None:
        return [], []
    a, b = namespaces.add("adv"), namespaces.add("brw")
    namespaces.link(a, "10.78.0.1/24", b, "10.78.0.2/24")
    return namespaces.exec(a), namespaces.exec(b)


def _measure(advertiser_ns: list[str], browser_ns: list[str], rounds: int,
             hold_s: float) -> tuple[list[dict[str, Any]], dict[str, float], list[dict[str, Any]]]:
    """Run the three roles; return the advertiser's registrations, when the browser found each
    name, and the timed ``browse()`` calls."""
    browser = _spawn(browser_ns, "--role", "browser")
    assert json.loads(browser.stdout.readline()).get("ready")
    time.sleep(0.5)
    found: dict[str, float] = {}

    def collect() -> None:
        for line in browser.stdout:
            entry = json.loads(line)
            found.setdefault(entry["name"], entry["found"])

    threading.Thread(target=collect, daemon=True).start()
    advertiser = _spawn(advertiser_ns, "--role", "advertiser", "--rounds", str(rounds), "--hold", str(hold_s))
    registrations = []
    steady = None
    for line in advertiser.stdout:
        entry = json.loads(line)
        if "steady" in entry:
            steady = entry["steady"]
            break
        registrations.append(entry)
    # One mDNS socket per host, as on a phone: a unicast answer to port 5353 reaches only one
    # of several sockets sharing it, so the running browser goes before browse() is timed.
    browser.communicate("")
    discover = _spawn(browser_ns, "--role", "discover", "--id", steady, "--rounds", str(rounds))
    discover_ms = [json.loads(line) for line in discover.communicate()[0].splitlines()]
    advertiser.communicate("")
    return registrations, found, discover_ms


def _summarise(registrations: list[dict[str, Any]], found: dict[str, float], discover_ms: list[dict[str, Any]],
               where: str, rounds: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The result rows (medians against the goal) and the raw samples behind them."""
    after_registered = [(found[r["name"]] - r["registered"]) * 1000 for r in registrations if r["name"] in found]
    after_called = [(found[r["name"]] - r["called"]) * 1000 for r in registrations if r["name"] in found]
    browse_ms = [d["ms"] for d in discover_ms if d["found"]]
    missed = len(registrations) - len(after_registered)
    rows = [
        row("mDNS registered → found by a running browser (median)", statistics.median(after_registered), "ms",
            f"≤ {GOAL_MS:.0f} ms", p95=round(percentile(after_registered, 95), 1), n=len(after_registered),
            missed=missed, where=where),
        row("mDNS register called → found, incl. conflict probing (median)", statistics.median(after_called),
            "ms", f"≤ {GOAL_MS:.0f} ms (RFC 6762 probing: 0–250 + 3 × 250 ms)",
            p95=round(percentile(after_called, 95), 1),
            n=len(after_called), where=where),
        row("browse() → daemon found, daemon already advertising (median)", statistics.median(browse_ms), "ms",
            "", p95=round(percentile(browse_ms, 95), 1), n=len(browse_ms),
            missed=len(discover_ms) - len(browse_ms), where=where),
    ]
    extra = {"where": where, "rounds": rounds,
             "samples_ms": {"registered_to_found": [round(v, 1) for v in after_registered],
                            "called_to_found": [round(v, 1) for v in after_called],
                            "browse_to_found": [round(v, 1) for v in browse_ms]}}
    return rows, extra


def run(rounds: int, hold_s: float, use_netns: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure ``rounds`` advertisements; the rows for the result file and its extra fields."""
    from _fixtures_netns import Namespaces, netns_unavailable

    reason = netns_unavailable() if use_netns else "disabled with --same-host"
    namespaces = Namespaces() if reason is None else None
    where = "two network namespaces joined by a veth" if namespaces is not None else f"same host ({reason})"
    try:
        advertiser_ns, browser_ns = _prefixes(namespaces)
        print(f"measuring on {where}", file=sys.stderr)
        registrations, found, discover_ms = _measure(advertiser_ns, browser_ns, rounds, hold_s)
    finally:
        if namespaces is not None:
            namespaces.close()
    return _summarise(registrations, found, discover_ms, where, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["browser", "advertiser", "discover"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--hold", type=float, default=1.5, help="seconds each round's service stays up")
    parser.add_argument("--id", help="(discover role) the instance id to look for")
    parser.add_argument("--same-host", action="store_true", help="do not use network namespaces")
    args = parser.parse_args()
    if args.role == "browser":
        role_browser()
    elif args.role == "advertiser":
        role_advertiser(args.rounds, args.hold)
    elif args.role == "discover":
        role_discover(args.id, args.rounds)
    else:
        rows, extra = run(args.rounds, args.hold, not args.same_host)
        for r in rows:
            print(f"{r['metric']}: {r['value']:.1f} {r['unit']} (p95 {r['p95']}, n={r['n']})")
        write_result("discovery", rows, **extra)


if __name__ == "__main__":
    main()
