"""Issue 4: twelve field cases of ESP-AT hosts, each made by the emulator and checked
against its hand-written trace's ``!`` outcome (``host_tests/fieldcase.py``).

Every case runs the agent as a MicroPython unix-port process (``firmware/main.py``, as
on a board) and in this CPython process (``Bench.run_inprocess``, where counters can be
inspected). The parser events of the same traces are replayed under both runtimes by
``host_tests/dual/test_traces.py``. Cousins of each input (other sizes, offsets and
lengths) run in process, some under MicroPython too.

Waits are board settings (``FAST``, reaching the process through ``RMOTA_SETTINGS``), so
a scenario takes about a second of wall-clock time.
"""

import hashlib
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
sys.path.insert(0, HERE)

from espat_emu import Faults  # noqa: E402
from fieldcase import check  # noqa: E402
from mkimage import make_image  # noqa: E402
from scenario import Bench  # noqa: E402

RUNTIMES = ["micropython", "cpython"]

# Board settings that shorten the agent's waits for these runs (names: HostOTA docs).
FAST = {
    # the traces' AT+HTTPCGET="",2048,2048,...: records of 1..2048 bytes; flash written
    # as blocks fill (the board's default may differ: pinned so the cases stay the same)
    "rx_size": 2048,
    "flash_mode": "stream",
    "fetch_wait_ms": 200,
    "backoff_ms": 50,
    "backoff_max_ms": 400,
    "max_attempts": 4,
    "prompt_ms": 400,
    "data_ms": 250,
    "pad_ms": 60,
    "quiet_ms": 300,
    "settle_ms": 200,
    "record_idle_ms": 250,
    "http_timeout_ms": 2000,
    # The traces download the whole file in one response, and the faults' body offsets
    # count from its first byte: no separate request for the header (the default).
    "header_first": False,
}

HELLO = b"hello rmota!"  # the 12-byte payload of the traces' 76-byte image


def _payload(n, seed=b"field"):
    out = bytearray()
    k = 0
    while len(out) < n:
        out += hashlib.sha256(seed + b"%d" % k).digest()
        k += 1
    return bytes(out[:n])


def run_case(
    tmp_path,
    runtime,
    payload,
    faults=None,
    settings=None,
    before=None,
    job=True,
    image=None,
    emu_options=None,
):
    """One job through the emulator with ``faults``; ``before(bench)`` may arm the HTTP
    server. Returns the ``scenario.Result`` (with ``url``)."""
    img = image if image is not None else make_image(payload, b"unix", 2)
    s = dict(FAST)
    s.update(settings or {})
    bench = Bench(img, str(tmp_path), faults or Faults(0), emu_options, settings=s, job=job)
    with bench:
        if before:
            before(bench)
        if runtime == "micropython":
            bench.run_process("micropython", max_boots=4, timeout_s=60)
        else:
            bench.run_inprocess(timeout_ms=60000)
    r = bench.result
    r.url = bench.url.encode()
    return r


def case(name, tmp_path, runtime, payload, **kw):
    """Run and check against trace ``name``'s outcome; returns the result."""
    r = run_case(tmp_path, runtime, payload, **kw)
    check(name, r, payload, r.url)
    return r


def fired(r, kind):
    return [w for k, w in r.emu.faults.log if k == kind]


# --- 1. a record shorter than its header says ---------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_01_short_record(runtime, tmp_path):
    r = case(
        "field_01_short_record",
        tmp_path,
        runtime,
        _payload(5000),
        faults=Faults(short_record={1: 2}),
    )
    assert fired(r, "short_record") == [1]
    # The response ended 2 bytes past the image: 16 of the file's bytes, fetched alone,
    # were found 2 bytes further on in the slot, so the records after the hole were
    # moved 2 bytes back. Then only the hole came again (a bounded request), then the
    # image's last 2 bytes (which had run past its end) with the 16-byte overlap.
    assert any("moved by -2 B" in x for x in r.output), r.output
    ranges = [q["headers"].get("Range") for q in r.http_log]
    assert len(ranges) == 4 and ranges[0] is None, ranges
    spans = [[int(x) for x in v.split("=")[1].split("-")] for v in ranges[1:3]]
    assert spans[0][1] - spans[0][0] == 15, ranges
    assert 0 < spans[1][1] - spans[1][0] < 4096 + 2048, ranges
    assert ranges[3] == "bytes=%d-" % (64 + 5000 - 2 - 16), ranges


@pytest.mark.parametrize(
    "size, short",
    [(3000, {0: 5}), (12000, {3: 100}), (6000, {2: -3}), (9000, {1: 1})],
)
def test_01_cousins(size, short, tmp_path):
    # In the header probe, far over, a header claiming fewer bytes, one byte over.
    r = case(
        "field_01_short_record",
        tmp_path,
        "cpython",
        _payload(size),
        faults=Faults(short_record=dict(short)),
    )
    assert fired(r, "short_record")
    assert r.agents[0].link.parser.frame_errors >= 1


# --- 2. same length, one byte changed -----------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_02_altered_in_every_download(runtime, tmp_path):
    f = Faults(flip_body_at={64 + 6}, flip_mask=0x20, persist_body_faults=True)
    r = case(
        "field_02_same_length_altered",
        tmp_path,
        runtime,
        HELLO,
        faults=f,
        settings={"max_attempts": 2},
    )
    assert len(fired(r, "flip")) == 2


@pytest.mark.parametrize("offset", [64, 64 + 11, 64 + 4096 + 17, 9000])
def test_02_cousins_once_then_good(offset, tmp_path):
    # A payload byte altered in one download only: caught, retried, then committed.
    p = _payload(10000)
    r = run_case(tmp_path, "cpython", p, faults=Faults(flip_body_at={offset}))
    assert fired(r, "flip")
    assert any("failed: SHA-256 mismatch" in x for x in r.output), r.output
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest()


@pytest.mark.parametrize("offset", [0, 22, 9, 40])
def test_02_header_altered_once_is_not_a_rejection(offset, tmp_path):
    # Magic, board id, payload length, digest: a header byte altered in transit must
    # not finish the job as rejected (5) nor commit anything wrong.
    p = _payload(3000)
    r = run_case(tmp_path, "cpython", p, faults=Faults(flip_body_at={offset}, flip_mask=0x04))
    assert fired(r, "flip")
    assert 5 not in [s for _, s, _ in r.results], r.output
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest(), r.output


def test_02_header_altered_every_time_never_commits(tmp_path):
    f = Faults(flip_body_at={22}, flip_mask=0x04, persist_body_faults=True)
    p = _payload(3000)
    r = run_case(tmp_path, "micropython", p, faults=f)
    assert r.slot == 0 and 2 not in [s for _, s, _ in r.results]
    assert r.final_status == 5  # seen twice, the same: the image is for another board


# --- 3. bytes stop mid-record ---------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_03_stall_mid_record(runtime, tmp_path):
    r = case(
        "field_03_stall_mid_record",
        tmp_path,
        runtime,
        _payload(5000),
        faults=Faults(silence_at_body=5, silence_s=0.3),
    )
    assert fired(r, "silence_at_body") == [5]
    assert any("failed: record stalled" in x for x in r.output), r.output


@pytest.mark.parametrize("at, silence_s, size", [(3000, 0.0, 5000), (7999, 0.6, 8000)])
def test_03_cousins(at, silence_s, size, tmp_path):
    r = case(
        "field_03_stall_mid_record",
        tmp_path,
        "cpython",
        _payload(size),
        faults=Faults(silence_at_body=at, silence_s=silence_s),
    )
    assert r.agents[0].link.record_stalls >= 1


def test_03_cousin_pause_then_the_rest(tmp_path):
    # The record stops for longer than the inactivity timeout (250 ms here), then the
    # rest arrives: during a download the record is held up to the stall bound (the
    # ESP's network timeout plus a margin), so it completes and nothing is fetched twice.
    p = _payload(6000)
    r = run_case(tmp_path, "cpython", p, faults=Faults(stall_at_body=3000, stall_s=0.6))
    assert fired(r, "stall_at_body") == [3000]
    assert not any("failed:" in x for x in r.output), r.output
    assert len(r.http_log) == 1, r.http_log
    assert r.agents[0].link.record_stalls == 0
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest()


def test_03_cousin_pause_past_the_stall_bound(tmp_path):
    # A pause longer than the stall bound (2 s + 2 s + one record's wire time here):
    # the record is a frame error and a hole; its tail, when it comes, is dropped as
    # lines, never image bytes; the records after it are written ahead, and only the
    # hole is fetched again (a bounded Range).
    p = _payload(6000)
    r = run_case(tmp_path, "cpython", p, faults=Faults(stall_at_body=3000, stall_s=5.0))
    assert fired(r, "stall_at_body") == [3000]
    assert r.agents[0].link.record_stalls == 1
    assert any("framing: record stalled" in x for x in r.output), r.output
    ranges = [q["headers"].get("Range") for q in r.http_log]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    lo, hi = ranges[1].split("=")[1].split("-")
    assert int(lo) < 3064 < int(hi) < 3064 + 4096 + 2048, ranges
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest()


# --- 4. final result, a URC and the next header in one read -----------------------------
NOTE_JOB1 = b"+RMFWNOTIFY:0,12,https://h/p?q,1.2.3,JOB1\r\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_04_final_urc_partial_header(runtime, tmp_path):
    r = case(
        "field_04_final_urc_partial_header",
        tmp_path,
        runtime,
        _payload(3000),
        faults=Faults(final_extra=NOTE_JOB1 + b"+HTTPC"),
    )
    assert fired(r, "final_extra")
    assert not any("no final result" in x for x in r.output)


def test_04_cousin_after_a_failed_attempt(tmp_path):
    # The dangling "+HTTPCGET:" fragment is followed by the next command's answer.
    f = Faults(short_record={1: 4}, final_extra=b"+RMOTA:1\r\n+HTTPCGET:")
    r = run_case(tmp_path, "cpython", _payload(6000), faults=f)
    assert r.final_status == 2 and r.slot == 1, r.output
    assert r.agents[0].esp_ota_status == 1


def test_04_cousin_same_job_fresh_url(tmp_path):
    # The URC in the same read is our own job announced again (a fresh presigned URL):
    # the next attempt uses it; nothing else changes.
    def arm(b):
        b.faults.final_extra = b.emu._notification() + b"+HTTP"

    f = Faults(short_record={1: 3})
    r = run_case(tmp_path, "cpython", _payload(4000), faults=f, before=arm)
    assert fired(r, "final_extra") and fired(r, "short_record")
    assert "announced again: URL refreshed" in "\n".join(r.output), r.output
    assert r.final_status == 2 and r.slot == 1, r.output


# --- 5. mangled final result ------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_05_mangled_final(runtime, tmp_path):
    r = case(
        "field_05_mangled_final",
        tmp_path,
        runtime,
        HELLO,
        faults=Faults(mangle_final=b"\r\nO\r\n"),
    )
    assert fired(r, "mangle_final")


@pytest.mark.parametrize(
    "mangled, size", [(b"", 9000), (b"\r\nOK", 76 - 64), (b"\r\nK\r\n", 5000)]
)
def test_05_cousins(mangled, size, tmp_path):
    r = case(
        "field_05_mangled_final",
        tmp_path,
        "cpython",
        _payload(size),
        faults=Faults(mangle_final=mangled),
    )
    assert fired(r, "mangle_final")


def test_05_mangled_final_and_altered_never_commits(tmp_path):
    f = Faults(mangle_final=b"\r\nO\r\n", flip_body_at={64 + 100}, persist_body_faults=True)
    r = run_case(tmp_path, "micropython", _payload(400), faults=f, settings={"max_attempts": 2})
    assert r.slot == 0 and r.final_status == 3 and 2 not in [s for _, s, _ in r.results]


# --- 6. a URL byte lost after the prompt -----------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_06_lost_url_byte(runtime, tmp_path):
    r = case(
        "field_06_lost_url_byte", tmp_path, runtime, _payload(3000), faults=Faults(lose_url_byte=5)
    )
    assert fired(r, "lose_url_byte") == [5]


@pytest.mark.parametrize("k", [0, 1082])
def test_06_cousins(k, tmp_path):
    # the first and the last byte of the 1,083-character URL
    r = case(
        "field_06_lost_url_byte",
        tmp_path,
        "cpython",
        _payload(3000),
        faults=Faults(lose_url_byte=k),
    )
    assert fired(r, "lose_url_byte") == [k]


def test_06_cousin_lost_header_byte(tmp_path):
    # The same for AT+HTTPCHEAD's data during a resume: never a command into the header.
    f = Faults(truncate_body_at=2500, lose_head_byte=3)
    r = case("field_06_lost_url_byte", tmp_path, "cpython", _payload(5000), faults=f)
    assert fired(r, "lose_head_byte") == [3]
    assert any("Range" in q["headers"] and q["status"] == 206 for q in r.http_log)


# --- 7. 403 with an error body ---------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_07_http403(runtime, tmp_path):
    case(
        "field_07_http403_error_body",
        tmp_path,
        runtime,
        _payload(3000),
        before=lambda b: b.srv.fail_next(403),
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_07_http403_without_err_code(runtime, tmp_path):
    r = case(
        "field_07_http403_no_err_code",
        tmp_path,
        runtime,
        _payload(3000),
        faults=Faults(drop_err_code=1),
        before=lambda b: b.srv.fail_next(403),
    )
    assert fired(r, "drop_err_code") == [0x010A7193]


@pytest.mark.parametrize("status", [404, 500])
def test_07_cousins_other_status(status, tmp_path):
    r = run_case(tmp_path, "cpython", _payload(3000), before=lambda b: b.srv.fail_next(status))
    assert r.final_status == 2 and r.slot == 1, r.output
    assert any("failed: HTTP %d" % status in x for x in r.output)


def test_07_cousin_error_page_on_resume(tmp_path):
    # The resumed request gets the 403 page: it is not written at the resume offset and
    # the prefix already held survives (the next try resumes again).
    p = _payload(9000)
    r = run_case(
        tmp_path,
        "cpython",
        p,
        faults=Faults(truncate_body_at=6000),
        before=lambda b: b.srv.fail_next(403, skip=1),
    )
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest(), r.output
    ranged = [q["status"] for q in r.http_log if "Range" in q["headers"]]
    assert ranged[:2] == [403, 206], r.http_log


# --- 8. truncated body that ends in OK ---------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_08_truncated_ok(runtime, tmp_path):
    case("field_08_truncated_ok", tmp_path, runtime, HELLO, faults=Faults(truncate_body_at=72))


@pytest.mark.parametrize("size, at", [(12, 70), (5000, 64 + 4096), (12000, 7001)])
def test_08_cousins(size, at, tmp_path):
    r = case(
        "field_08_truncated_ok",
        tmp_path,
        "cpython",
        _payload(size),
        faults=Faults(truncate_body_at=at),
    )
    assert fired(r, "truncate_body") == [at]


@pytest.mark.parametrize("at", [40, 64])
def test_08_cousins_inside_or_at_the_header(at, tmp_path):
    # Too little to resume from: a full download again, never success on the short one.
    r = run_case(tmp_path, "cpython", HELLO, faults=Faults(truncate_body_at=at))
    assert [s for _, s, _ in r.results] == [1, 2] and r.slot == 1, r.output
    assert any("failed:" in x for x in r.output)


# --- 9. the server ignores Range --------------------------------------------------------
def _ignore_range(b):
    b.srv.ignore_range = True


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_09_range_ignored(runtime, tmp_path):
    case(
        "field_09_range_ignored",
        tmp_path,
        runtime,
        HELLO,
        faults=Faults(truncate_body_at=72),
        before=_ignore_range,
    )


@pytest.mark.parametrize("size, at", [(10000, 6000), (5000, 64 + 4096 + 1)])
def test_09_cousins(size, at, tmp_path):
    r = case(
        "field_09_range_ignored",
        tmp_path,
        "cpython",
        _payload(size),
        faults=Faults(truncate_body_at=at),
        before=_ignore_range,
    )
    assert r.agents[-1].range_ok is False or r.agents[0].range_ok is False


# --- 10. busy p... instead of a prompt ------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_10_busy_no_prompt(runtime, tmp_path):
    f = Faults(busy_next=1, busy_match=b"AT+HTTPURLCFG=", busy_code=True)
    r = case("field_10_busy_no_prompt", tmp_path, runtime, _payload(2000), faults=f)
    assert len(fired(r, "busy")) == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_10_busy_then_prompt(runtime, tmp_path):
    f = Faults(busy_next=1, busy_match=b"AT+HTTPURLCFG=", busy_code=True, busy_then_run_ms=200)
    r = case("field_10_busy_then_prompt", tmp_path, runtime, _payload(2000), faults=f)
    assert len(fired(r, "busy")) == 1
    # the late prompt was used: one AT+HTTPURLCFG=<n> line per URL the ESP took
    sets = [x for x in r.emu.lines.queue if x.startswith(b"AT+HTTPURLCFG=")]
    assert len(sets) == 1, sets


@pytest.mark.parametrize("n, late_ms", [(3, None), (1, 800)])
def test_10_cousins(n, late_ms, tmp_path):
    # Three refusals in a row; a prompt that comes after the agent gave up (padded).
    f = Faults(busy_next=n, busy_match=b"AT+HTTPURLCFG=", busy_code=True, busy_then_run_ms=late_ms)
    r = case("field_10_busy_no_prompt", tmp_path, "cpython", _payload(2000), faults=f)
    assert len(fired(r, "busy")) == n


@pytest.mark.parametrize("late_ms", [None, 200])
def test_10_cousin_busy_on_range_header(late_ms, tmp_path):
    # busy p... for AT+HTTPCHEAD must not turn Range off for the job.
    f = Faults(
        truncate_body_at=3000,
        busy_next=1,
        busy_match=b"AT+HTTPCHEAD=1",
        busy_code=True,
        busy_then_run_ms=late_ms,
    )
    p = _payload(6000)
    r = run_case(tmp_path, "cpython", p, faults=f)
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest(), r.output
    assert any(q["status"] == 206 for q in r.http_log), r.http_log


@pytest.mark.parametrize("match", [b"AT+RMOTAFETCH", b"AT+HTTPCHEAD=0", b"AT+RMOTARESULT"])
def test_10_cousin_busy_on_other_commands(match, tmp_path):
    # Any command answered busy p... is sent again after a back-off: a busy fetch must
    # not leave the job unseen, a busy result must not be lost.
    f = Faults(busy_next=1, busy_match=match, busy_code=True, busy_then_run_ms=200)
    r = run_case(tmp_path, "cpython", _payload(2000), faults=f)
    assert fired(r, "busy")
    assert r.final_status == 2 and r.slot == 1, r.output


# --- 11. the ESP resets inside a record -------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_11_reset_in_record(runtime, tmp_path):
    r = case(
        "field_11_reset_in_record",
        tmp_path,
        runtime,
        _payload(5000),
        faults=Faults(reboot_at_body=3000),
    )
    assert fired(r, "reboot_at_body") == [3000]
    assert any(q["status"] == 206 for q in r.http_log)  # resumed, not restarted


@pytest.mark.parametrize("at, size", [(4096 + 64, 9000), (2047, 2100), (6000, 6100)])
def test_11_cousins(at, size, tmp_path):
    r = case(
        "field_11_reset_in_record",
        tmp_path,
        "cpython",
        _payload(size),
        faults=Faults(reboot_at_body=at),
    )
    assert r.emu.boots == 1


@pytest.mark.parametrize("at", [10, 100])
def test_11_cousin_reset_in_the_first_record(at, tmp_path):
    # Inside the header, or in the first record: an aborted record delivers nothing,
    # so nothing is held yet: no Range, a fresh download after re-initialising.
    p = _payload(3000)
    r = run_case(tmp_path, "micropython", p, faults=Faults(reboot_at_body=at))
    assert r.emu.boots == 1 and r.final_status == 2, r.output
    assert r.slot_sha256 == hashlib.sha256(p).digest()
    assert any("failed: ESP reset" in x for x in r.output), r.output


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_11_cousin_ready_lost(runtime, tmp_path):
    # The reboot banner never arrives: the agent notices the reboot because the ESP
    # echoes its AT again (it forgot ATE0), and still re-arms the pending flag.
    p = _payload(5000)
    r = run_case(tmp_path, runtime, p, faults=Faults(reboot_at_body=3000, lose_ready=True))
    assert fired(r, "lose_ready")
    assert "rebooted unseen" in "\n".join(r.output), r.output
    assert [s for _, s, _ in r.results] == [1, 2] and r.slot == 1, r.output
    assert r.slot_sha256 == hashlib.sha256(p).digest()
    lines = list(r.emu.lines.queue)
    first_get = next(i for i, x in enumerate(lines) if x.startswith(b"AT+HTTPCGET"))
    assert any(x.startswith(b"AT+RMOTAFETCH") for x in lines[first_get:]), lines


# --- 12. +RMOTA numbers -----------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_12_rmota_numbers(runtime, tmp_path):
    r = case(
        "field_12_rmota_numbers",
        tmp_path,
        runtime,
        HELLO,
        job=False,
        faults=Faults(wifi_ota_on_fetch=[1, 2, 3, 5, 4, 9]),
    )
    assert r.emu.boots == 1  # restarted once
    assert r.exit_codes == [0]


@pytest.mark.parametrize("statuses", [[1, 3], [5], [4, 9], [1]])
def test_12_cousins_no_restart(statuses, tmp_path):
    r = run_case(tmp_path, "cpython", HELLO, job=False, faults=Faults(wifi_ota_on_fetch=statuses))
    assert r.emu.boots == 0 and not any(b"AT+RST" in x for x in r.emu.lines.queue)
    assert r.agents[0].esp_restart_wanted is False


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_12_restart_waits_for_the_host_job(runtime, tmp_path):
    # +RMOTA:2 before a host job: AT+RST only once the download is over (before the
    # host's own reboot forgets it); the job still ends with 2.
    r = run_case(tmp_path, runtime, _payload(3000), faults=Faults(wifi_ota_on_fetch=[1, 2]))
    lines = list(r.emu.lines.queue)
    rst = [i for i, x in enumerate(lines) if x.startswith(b"AT+RST")]
    gets = [i for i, x in enumerate(lines) if x.startswith(b"AT+HTTPCGET")]
    assert rst and gets and rst[0] > gets[-1], lines
    assert r.final_status == 2 and r.slot == 1, r.output
