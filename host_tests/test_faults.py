"""The fault campaign in the test suite (issue 3): a fixed set of seeded scenarios under the
MicroPython unix port and CPython, and the exhaustive power-cut mode on a small image.
Each scenario runs the agent in-process on a virtual clock (tools/faultrun.py, through
the ESP-AT model tools/espsim.py); any violated invariant fails the test, with the
one-line command that replays the seed. ``make faults SEEDS=2000`` runs the big one."""

import os
import sys

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)

import faults  # noqa: E402

SEEDS = 200  # per runtime: 0..199
BATCH = 25
RUNTIMES = ["micropython", "cpython"]


def _fmt(failing):
    return "\n".join(
        "%s   # %s" % (faults.repro(r["runtime"], "-v %d" % r["seed"]), "; ".join(r["violations"]))
        for r in failing
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_campaign_fixed_seeds(runtime):
    jobs = [
        (runtime, ["--range", str(lo), str(min(SEEDS, lo + BATCH))])
        for lo in range(0, SEEDS, BATCH)
    ]
    records, errors = faults.run_parallel(jobs, os.cpu_count() or 2)
    assert not errors, "\n".join(errors)
    rs = [r for r in records if r["_kind"] == "R"]
    assert sorted(r["seed"] for r in rs) == list(range(SEEDS))
    text, failing = faults.table(records, [runtime])
    print(text)
    assert not failing, "%d of %d scenarios violate an invariant:\n%s" % (
        len(failing),
        len(rs),
        _fmt(failing),
    )
    # the campaign exercises what it claims: updates, power cuts, every fault kind
    assert sum(1 for r in rs if r["committed"]) > SEEDS // 2
    assert sum(r["cuts_fired"] for r in rs) > SEEDS // 2
    kinds = {k for r in rs for k in r["kinds"]}
    assert kinds >= set(faults_kinds()), set(faults_kinds()) - kinds


def faults_kinds():
    import faultrun

    return list(faultrun.TRANSIENT) + sorted(faultrun.PERMANENT)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exhaustive_power_cuts(runtime):
    records, errors = faults.run_parallel([(runtime, ["--exhaustive"])], 1)
    assert not errors, "\n".join(errors)
    (x,) = [r for r in records if r["_kind"] == "X"]
    (c,) = [r for r in records if r["_kind"] == "C"]
    assert c["clean_ok"]
    assert x["tried"] == x["ops"] == c["ops"] > 20
    bad = [r for r in records if r["_kind"] == "R" and r["violations"]]
    assert x["held"] == x["tried"], "\n".join(
        "cut %d (%s): %s\n  %s"
        % (
            r["cut_op"],
            r["op_kind"],
            r["violations"][0],
            faults.repro(runtime, "--exhaustive --cut %d -v" % r["cut_op"]),
        )
        for r in bad
    )
