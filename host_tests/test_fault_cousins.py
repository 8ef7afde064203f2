"""Cousins of the campaign's faults that an adversarial round found (round 8,
docs/bad-input.md), run as fixed scenarios of the fault campaign's runner
(tools/faultrun.py, in-process on a virtual clock): each must end in 2 with no
violation."""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)

import faultrun  # noqa: E402


def _run(size, kinds, faults, seed=1):
    flash = faultrun.Flash()
    try:
        sc = faultrun.make_scenario(seed, size=size, kinds=kinds, cuts=[], faults=faults)
        sn = faultrun.Scenario(sc, flash)
        return sn.run(), sn.log
    finally:
        flash.remove()


def test_an_esp_reboot_that_ends_the_first_record_of_a_range_response_in_ready():
    # "\r\nready" filled the last 7 bytes of the image request's first record (a Range
    # response, its first bytes already held): dropping the record rewound the slot to
    # a negative offset ("short: -4032 of 30064 B"), and every later attempt failed
    # "unexpected response" until the job was reported 3.
    for off in range(5240, 5256):
        r, log = _run(30000, ["esp_reboot"], {"reboot_at_body": off})
        assert r["violations"] == [], (off, r["violations"])
        assert r["statuses"] == [1, 2], (off, r["statuses"], log[-8:])
        assert not [x for x in log if "short: -" in x], off


def test_one_wire_fault_in_the_notification_never_closes_a_good_job():
    # A digit of +RMFWNOTIFY's type or size dropped, doubled or altered: 5 for a good
    # image (campaign seed 916567 and six others in 700,000).
    for kind in ("drop_at", "dup_at", "flip_at"):
        for off in range(0, 80):
            r, log = _run(9000, ["drop"], {kind: [off]})
            assert r["violations"] == [], (kind, off, r["violations"])
            assert 5 not in r["statuses"] and r["final"] == 2, (kind, off, r["statuses"])
