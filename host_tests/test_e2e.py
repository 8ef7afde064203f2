"""End to end on the desktop: the agent as its own process (real MicroPython unix port,
and CPython), the ESP-AT emulator on a pty, a real HTTP server, the NOR flash file with
a dirty inactive slot, reboots as process restarts (issue 2 sections 4 and 5)."""

import hashlib
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))

from espat_emu import Faults  # noqa: E402
from firmware_src import microbit_firmware  # noqa: E402
from mkimage import make_image  # noqa: E402
from scenario import run_update  # noqa: E402

RUNTIMES = ["micropython", "cpython"]


def _payload(n, seed=b"app"):
    out = bytearray()
    k = 0
    while len(out) < n:
        out += hashlib.sha256(seed + b"%d" % k).digest()
        k += 1
    return bytes(out[:n])


def _index(lines, needle):
    for i, line in enumerate(lines):
        if needle in line:
            return i
    raise AssertionError("%r not in output:\n%s" % (needle, "\n".join(lines)))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_microbit_firmware_update(runtime, tmp_path):
    fw = microbit_firmware()
    r = run_update(fw, version=2, runtime=runtime, workdir=str(tmp_path))
    out = "\n".join(r.output)
    assert r.exit_codes == [75, 0], out
    assert r.final_status == 2 and r.job_finished, out
    assert [s for _, s, _ in r.results] == [1, 2]
    assert r.slot == 1 and r.image_len == len(fw)
    assert r.slot_sha256 == hashlib.sha256(fw).digest()
    assert (
        r.slot_sha256.hex() == "ac293db42dc1be239e8c8e9baacb1af27706c3601eee616aba1c7653e99aa99e"
    )
    assert r.record.state == 1  # confirmed
    # 2 is reported only by the process that booted the new image and confirmed it
    assert _index(r.output, "booted slot 1 version 2 (trial)") < _index(r.output, "reported 2")
    assert "W:" not in out and "E:" not in out, out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_passive_notification(runtime, tmp_path):
    p = _payload(70000)
    r = run_update(p, runtime=runtime, workdir=str(tmp_path), passive=True)
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest()


@pytest.mark.parametrize(
    "image_kw, reason",
    [
        (dict(board_id=b"rp2-pico"), "image for board rp2-pico"),
        (dict(version=1), "version 1 already running"),
        (dict(version=0), "downgrade 0 < 1"),
    ],
)
def test_refused_images_report_5_and_touch_nothing(image_kw, reason, tmp_path):
    p = _payload(9000)
    r = run_update(p, runtime="micropython", workdir=str(tmp_path), **image_kw)
    assert r.exit_codes == [0]
    assert r.final_status == 5 and r.job_finished
    assert r.results[-1][2] == reason
    assert r.slot == 0 and r.record.state == 1  # still the factory image, confirmed


def test_not_an_image_is_refused(tmp_path):
    blob = b"<html>this is not firmware</html>" * 100
    r = run_update(b"", runtime="micropython", workdir=str(tmp_path), image=blob)
    assert r.final_status == 5 and r.results[-1][2] == "not an rmota image (bad magic)"
    assert r.slot == 0


def test_digest_mismatch_never_commits(tmp_path):
    # A header whose digest does not match its payload (every download alike): the
    # agent retries, never commits, and reports 3.
    p = _payload(20000)
    img = bytearray(make_image(p, b"unix", 2))
    img[64 + 5000] ^= 0x40
    r = run_update(p, runtime="micropython", workdir=str(tmp_path), image=bytes(img))
    out = "\n".join(r.output)
    assert r.final_status == 3, out
    assert r.results[-1][2] == "SHA-256 mismatch"
    assert r.slot == 0 and r.exit_codes == [0]
    assert not r.job_finished  # 3 leaves the job pending for a retry


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_flipped_byte_in_transit_is_caught_then_retried(runtime, tmp_path):
    p = _payload(50000)
    f = Faults(seed=3, flip_body_at={64 + 30000}, flip_mask=0x01)
    r = run_update(p, runtime=runtime, workdir=str(tmp_path), faults=f)
    out = "\n".join(r.output)
    print(f.log)
    assert len(f.log) == 1, f.log
    assert "attempt 1 failed: SHA-256 mismatch" in out, out
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest(), out
    assert r.http_requests >= 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_power_cut_mid_download_resumes_with_range(runtime, tmp_path):
    # The NOR model kills the agent process inside flash operation 60 (a program or
    # erase of the download, or a journal write); the next power-on finds the journal,
    # checks the blocks against their CRCs, rehashes them, and resumes with a Range.
    p = _payload(100000)
    r = run_update(p, runtime=runtime, workdir=str(tmp_path), cuts=[(60, 100)])
    out = "\n".join(r.output)
    assert r.exit_codes[0] in (-9, 137) and r.exit_codes[1:] == [75, 0], out  # killed
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest(), out
    line = r.output[_index(r.output, "resuming job")]
    kept = int(line.split(" at ")[1].split(" of ")[0])
    assert 64 + 4096 <= kept < 64 + len(p)
    gets = [q for q in r.requests if q["method"] == "GET"]
    assert len(gets) == 3  # the header alone, the image, the resume
    assert gets[0]["headers"].get("Range") == "bytes=0-63"
    assert gets[2]["headers"].get("Range") == "bytes=%d-" % (kept - 16)  # 16-byte overlap
    assert [s for _, s, i in r.results] == [1, 1, 2] and r.results[1][2] == "resuming"


def test_power_cut_after_commit_before_reboot_still_finishes(tmp_path):
    # A cut in the boot after the commit (the boot record write that starts the trial)
    # never bricks: the board comes up on one slot or the other and the job ends in 2.
    p = _payload(10000)
    for op in (0, 1, 2, 3):
        r = run_update(p, workdir=str(tmp_path / str(op)), cuts=[None, (op, 20)])
        assert r.final_status == 2 and r.job_finished, (op, r.results)
        assert r.slot == 1 and r.record.state == 1
        assert r.slot_sha256 == hashlib.sha256(p).digest()
