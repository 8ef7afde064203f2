"""The fault campaign (issue 3): seeded scenarios under MicroPython and CPython, one table.

Each scenario (``tools/faultrun.py``, which runs unchanged under both runtimes) updates
the desktop board in-process on a virtual clock through the ESP-AT model
``tools/espsim.py``, with a seeded mix of faults and host power cuts, and checks the
invariants. This driver (CPython) runs batches of seeds as subprocesses under each
runtime, in parallel, and prints::

    scenarios, updates committed, final statuses correct, slots bricked, unverified
    commits, bytes re-downloaded per interruption (median, max), unhandled exceptions

and every failing seed with a one-line command that reproduces it. ``--exhaustive``
cuts the power at every flash operation of a small clean update in turn instead.

Usage::

    python tools/faults.py --seeds 2000                  # make faults SEEDS=2000
    python tools/faults.py --seeds 200 --runtime micropython
    python tools/faults.py --exhaustive                  # make faults EXHAUSTIVE=1

Exit status 1 when any scenario or cut point violates an invariant.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join("tools", "faultrun.py")
VENV_BIN = os.path.join(".venv", "bin")
RUNTIMES = ("micropython", "cpython")
# Re-download bound per interruption the issue asks for: one erase block plus one chunk
# (a +HTTPCGET record of the board's rx size) plus the image header (64 B, which also
# covers the 16-byte resume overlap).
sys.path.insert(0, os.path.join(ROOT, "boards", "unix"))
sys.path.insert(0, os.path.join(ROOT, "lib"))
import board as _unix_board  # noqa: E402


def bound_for(settings):
    """The bound for board ``settings`` (None: the defaults): the erase unit the board
    uses (``plan_flash()`` picks it when not set: 32 KB block erases at 921600 with the
    faithful UART) plus the rx size plus 64 bytes."""
    st = dict(_unix_board.DEFAULT_SETTINGS, **(settings or {}))
    eu = st.get("erase_unit")
    if not isinstance(eu, int) or eu <= 0:
        eu = _unix_board.plan_flash(st)["erase_unit"]
    return max(eu, 4096) + st["rx_size"] + 64


BOUND = bound_for(None)


def _exe(runtime):
    if runtime == "micropython":
        return [os.path.join(os.path.dirname(sys.executable), "micropython"), "-X", "heapsize=16m"]
    return [sys.executable]


SETTINGS = None  # board settings for every scenario (--settings JSON), None: defaults


def repro(runtime, args):
    """The one-line command (run from the repository root) that reproduces a case."""
    exe = os.path.join(VENV_BIN, "micropython" if runtime == "micropython" else "python")
    if runtime == "micropython":
        exe += " -X heapsize=16m"  # as the campaign runs it
    if SETTINGS:
        args = "--settings '%s' %s" % (json.dumps(SETTINGS), args)
    return "%s %s %s" % (exe, RUNNER, args)


def _run_batch(runtime, args, out, errors):
    if SETTINGS:
        args = ["--settings", json.dumps(SETTINGS)] + list(args)
    cmd = _exe(runtime) + [os.path.join(ROOT, RUNNER)] + args
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        errors.append("%s %s: timed out" % (runtime, " ".join(args)))
        return
    seen = 0
    for line in p.stdout.splitlines():
        if line[:2] in ("R ", "C ", "X "):
            try:
                rec = json.loads(line[2:])
            except ValueError:
                errors.append("%s: bad line %r" % (runtime, line[:200]))
                continue
            rec["_kind"] = line[0]
            rec["runtime"] = runtime
            out.append(rec)
            seen += 1
    if p.returncode != 0 or not seen:
        tail = (p.stdout[-1500:] + p.stderr[-1500:]).strip()
        errors.append("%s %s: exit %d\n%s" % (runtime, " ".join(args[:4]), p.returncode, tail))


def run_parallel(jobs, n_workers):
    """``jobs``: list of (runtime, args). Returns (records, errors)."""
    out = []
    errors = []
    lock = threading.Lock()
    todo = list(jobs)

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                runtime, args = todo.pop(0)
            recs = []
            _run_batch(runtime, args, recs, errors)
            with lock:
                out.extend(recs)

    ts = [threading.Thread(target=worker) for _ in range(max(1, n_workers))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out, errors


def _median(xs):
    if not xs:
        return 0
    s = sorted(xs)
    return s[len(s) // 2]


def table(records, runtimes):
    """The campaign table (str) and the failing records."""
    head = (
        "runtime",
        "scenarios",
        "updates committed",
        "final statuses correct",
        "slots bricked",
        "unverified commits",
        "re-downloaded per interruption (median, max)",
        "unhandled exceptions",
    )
    rows = []
    failing = []
    for rt in runtimes:
        rs = [r for r in records if r["runtime"] == rt and r["_kind"] == "R"]
        if not rs:
            continue
        per = []
        for r in rs:
            per.extend(r.get("refetch", []))
        bad = [r for r in rs if r.get("violations")]
        failing.extend(bad)
        rows.append(
            (
                rt,
                str(len(rs)),
                str(sum(1 for r in rs if r.get("committed"))),
                "%d/%d" % (sum(1 for r in rs if r.get("correct")), len(rs)),
                str(sum(r.get("bricked", 0) for r in rs)),
                str(sum(r.get("unverified", 0) for r in rs)),
                "%d B, %d B (%d interruptions, %d over %d B)"
                % (
                    _median(per),
                    max(per) if per else 0,
                    len(per),
                    sum(1 for x in per if x > BOUND),
                    BOUND,
                ),
                str(
                    sum(r.get("unhandled", 0) for r in rs)
                    + sum(1 for r in rs if "harness_error" in r)
                ),
            )
        )
    widths = [
        max(len(head[i]), max((len(r[i]) for r in rows), default=0)) for i in range(len(head))
    ]
    lines = ["| " + " | ".join(head[i].ljust(widths[i]) for i in range(len(head))) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        lines.append("| " + " | ".join(r[i].ljust(widths[i]) for i in range(len(r))) + " |")
    return "\n".join(lines), failing


def extra_stats(records, runtimes):
    """Lines about what the campaign exercised (fault kinds, cuts, boots)."""
    out = []
    for rt in runtimes:
        rs = [r for r in records if r["runtime"] == rt and r["_kind"] == "R"]
        if not rs:
            continue
        kinds = {}
        for r in rs:
            for k in r.get("kinds", []):
                kinds[k] = kinds.get(k, 0) + 1
        cuts = sum(r.get("cuts_fired", 0) for r in rs)
        restarts = sum(r.get("full_restarts", 0) for r in rs)
        ign = sum(r.get("ignored_range_bytes", 0) for r in rs)
        vms = sum(r.get("virtual_ms", 0) for r in rs)
        real = sum(r.get("real_s", 0) for r in rs)
        stalled = [r["seed"] for r in rs if r.get("stalled_idle")]
        out.append(
            "%s: %d scenarios where the agent went idle with the job open and no failure "
            "reported (a later notification moved it on)%s"
            % (rt, len(stalled), ", e.g. seeds %s" % stalled[:5] if stalled else "")
        )
        out.append(
            "%s: %d power cuts fired, %d boots, %d full re-downloads (digest failure or "
            "rollback), "
            "%d B re-sent by servers that ignored Range; %.0f s virtual in %.1f s of"
            " scenario run time (summed over the workers)"
            % (rt, cuts, sum(r.get("boots", 0) for r in rs), restarts, ign, vms / 1000, real)
        )
        reqs = [x for r in rs for x in r.get("refetch_requests", [])]
        if reqs:
            out.append(
                "  requests that fetched bytes again: %d (median %d B, max %d B; %d over %d B"
                ", where one made up for several interruptions)"
                % (
                    len(reqs),
                    _median(reqs),
                    max(reqs),
                    sum(1 for x in reqs if x > BOUND),
                    BOUND,
                )
            )
        over = sum(r.get("uart_overflows", 0) for r in rs)
        if over:
            out.append("  bytes lost to UART receive overflow: %d" % over)
        out.append("  fault kinds: " + ", ".join("%s %d" % (k, kinds[k]) for k in sorted(kinds)))
        # Which faults the interruptions over the bound came with (a scenario mixes
        # several kinds: each of its kinds is counted once per such scenario).
        by = {}
        for r in rs:
            if any(x > BOUND for x in r.get("refetch", [])):
                for k in r.get("kinds", []):
                    by[k] = by.get(k, 0) + 1
        if by:
            top = sorted(by.items(), key=lambda kv: -kv[1])
            out.append(
                "  scenarios with an interruption over %d B, by fault kind: %s, e.g. seeds %s"
                % (
                    BOUND,
                    ", ".join("%s %d" % kv for kv in top),
                    [r["seed"] for r in rs if any(x > BOUND for x in r.get("refetch", []))][:6],
                )
            )
    return out


def campaign(seeds, start, runtimes, n_workers, batch):
    jobs = []
    for rt in runtimes:
        for lo in range(start, start + seeds, batch):
            hi = min(start + seeds, lo + batch)
            jobs.append((rt, ["--range", str(lo), str(hi)]))
    # MicroPython batches are slower: start them first.
    jobs.sort(key=lambda j: j[0] != "micropython")
    t0 = time.time()
    records, errors = run_parallel(jobs, n_workers)
    text, failing = table(records, runtimes)
    print(
        "Fault campaign: seeds %d..%d, %s%s (%.0f s)"
        % (
            start,
            start + seeds - 1,
            " and ".join(runtimes),
            ", board settings %s" % json.dumps(SETTINGS) if SETTINGS else "",
            time.time() - t0,
        )
    )
    print(text)
    for line in extra_stats(records, runtimes):
        print(line)
    for rt in runtimes:
        got = {r["seed"] for r in records if r["runtime"] == rt and r["_kind"] == "R"}
        missing = [s for s in range(start, start + seeds) if s not in got]
        if missing:
            errors.append(
                "%s: no result for %d seeds (first %s)" % (rt, len(missing), missing[:5])
            )
    failing.sort(key=lambda r: (r["runtime"], r["seed"]))
    if failing:
        print("\nFailing seeds (%d):" % len(failing))
        for r in failing:
            print(
                "  %s   # %s; %s"
                % (
                    repro(r["runtime"], "-v %d" % r["seed"]),
                    "+".join(r.get("kinds", [])) or "no faults",
                    r["violations"][0],
                )
            )
    for e in errors:
        print("ERROR:", e)
    return 1 if failing or errors else 0


def exhaustive(runtimes, n_workers):
    jobs = [(rt, ["--exhaustive"]) for rt in runtimes]
    t0 = time.time()
    records, errors = run_parallel(jobs, n_workers)
    status = 0
    print("Exhaustive power cuts (%.0f s):" % (time.time() - t0))
    for rt in runtimes:
        xs = [r for r in records if r["runtime"] == rt and r["_kind"] == "X"]
        cs = [r for r in records if r["runtime"] == rt and r["_kind"] == "C"]
        if not xs:
            continue
        x = xs[0]
        c = cs[0] if cs else {}
        kinds = c.get("kinds", {})
        print(
            "  %s: a clean update makes %d flash operations (%s); cut points tried %d, held %d"
            % (
                rt,
                x["ops"],
                ", ".join("%d %ss" % (kinds[k], k) for k in sorted(kinds)),
                x["tried"],
                x["held"],
            )
        )
        bad = [r for r in records if r["runtime"] == rt and r["_kind"] == "R" and r["violations"]]
        for r in bad:
            print(
                "    cut %d (%s of %d B): %s\n      %s"
                % (
                    r["cut_op"],
                    r.get("op_kind"),
                    r.get("op_len", 0),
                    r["violations"][0],
                    repro(rt, "--exhaustive --cut %d -v" % r["cut_op"]),
                )
            )
        if bad or x["held"] != x["tried"]:
            status = 1
    for e in errors:
        print("ERROR:", e)
        status = 1
    return status


def main(argv=None):
    ap = argparse.ArgumentParser(description="rmota fault campaign (issue 3)")
    ap.add_argument(
        "--seeds",
        type=int,
        default=int(os.environ.get("SEEDS") or 200),
        help="random scenarios to run (env SEEDS; default 200)",
    )
    ap.add_argument(
        "--start",
        type=int,
        default=int(os.environ.get("START") or 0),
        help="first seed (env START; default 0)",
    )
    ap.add_argument(
        "--runtime",
        default=os.environ.get("RUNTIME") or "both",
        choices=("both",) + RUNTIMES,
        help="run the agent under this runtime, or both (env RUNTIME)",
    )
    ap.add_argument(
        "--exhaustive",
        action="store_true",
        default=os.environ.get("EXHAUSTIVE", "") not in ("", "0"),
        help="cut the power at every flash operation of a small update in turn (env EXHAUSTIVE=1)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 2,
        help="processes side by side (default: cores)",
    )
    ap.add_argument("--batch", type=int, default=50, help="seeds per subprocess")
    ap.add_argument("--seed", type=int, help="run this one seed verbosely instead")
    ap.add_argument(
        "--settings",
        default=os.environ.get("SETTINGS") or None,
        help="board settings as JSON for every scenario (env SETTINGS), e.g."
        " '{\"faithful\": true}'",
    )
    a = ap.parse_args(argv)
    global SETTINGS, BOUND
    SETTINGS = json.loads(a.settings) if a.settings else None
    BOUND = bound_for(SETTINGS)
    runtimes = RUNTIMES if a.runtime == "both" else (a.runtime,)
    if a.seed is not None:
        st = 0
        for rt in runtimes:
            print("==== %s: %s" % (rt, repro(rt, "-v %d" % a.seed)))
            extra = ["--settings", json.dumps(SETTINGS)] if SETTINGS else []
            st |= subprocess.call(_exe(rt) + [RUNNER] + extra + ["-v", str(a.seed)], cwd=ROOT)
        return st
    if a.exhaustive:
        return exhaustive(runtimes, a.jobs)
    return campaign(a.seeds, a.start, runtimes, a.jobs, a.batch)


if __name__ == "__main__":
    sys.exit(main())
