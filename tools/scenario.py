"""Run a whole host OTA on the desktop: HTTP server + ESP-AT emulator + the agent as a
separate process (MicroPython unix port or CPython) on the unix board, rebooting it as
often as it asks. Used by ``make demo`` (tools/demo.py) and the end-to-end tests.

Usage::

    from scenario import run_update
    r = run_update(payload, version=2, runtime="micropython", workdir="/tmp/x")
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(payload).digest()
"""

import hashlib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in ("tools", "boards/unix", "lib"):
    _p = os.path.join(ROOT, _p)
    if _p not in sys.path:
        sys.path.insert(0, _p)

from espat_emu import ESPEmulator, Faults, PtyPort  # noqa: E402
from httpfiles import HTTPFiles  # noqa: E402
from mkimage import make_image  # noqa: E402
from seedurl import presigned_url  # noqa: E402

import board as unix_board  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
OBJECT_PATH = "/users/GitHub_U8JZpDE0iGXlD6gNCFbaEP/firmwareimages/ja76RnICh/AT_OTA_TEST_2.bin"
FACTORY_VERSION = 1
JOB_ID = "tP8HKQDLM7ToThwNScgrLR"
REBOOT = 75


class Result:
    """What a run did: ``final_status`` (the emulator's last accepted
    ``AT+RMOTARESULT`` status), ``results`` (all of them), ``job_finished`` (the cloud
    job is gone: status 2 or 5 was accepted), ``boots`` (agent processes started),
    ``exit_codes``, ``slot`` (index the board boots), ``slot_sha256`` (digest of that
    slot's image as read back from the flash file), ``image_len``, ``elapsed_s``,
    ``output`` (everything the agent printed), ``http_requests``, ``wire_rx``/``wire_tx``
    (bytes the ESP received / sent)."""


def _runtime_cmd(runtime):
    main = os.path.join(ROOT, "firmware", "main.py")
    if runtime == "micropython":
        return [MICROPYTHON, "-X", "heapsize=512k", main]
    if runtime == "cpython":
        return [sys.executable, main]
    raise ValueError("runtime must be micropython or cpython")


def _env(runtime, flash, uart):
    env = dict(os.environ)
    path = os.pathsep.join(os.path.join(ROOT, p) for p in ("lib", "boards/unix"))
    if runtime == "micropython":
        env["MICROPYPATH"] = path
    else:
        env["PYTHONPATH"] = path
    env["RMOTA_FLASH"] = flash
    env["RMOTA_UART"] = uart
    env["RMOTA_JOURNAL"] = flash + ".journal"
    return env


def factory_image():
    """The image provisioned in slot 0 before an update: version 1 of a small app."""
    return b"rmota factory application v1\n" * 512


def dirty_slot(flash, index=1, seed=b"old"):
    """Fill slot ``index`` with leftover bytes (an older, abandoned download), so that a
    missing erase before programming corrupts the new image instead of going unseen."""
    b = unix_board.Board(flash, boot=False)
    try:
        part = b.slots[index]
        n = part.ioctl(4, 0)
        block = bytes(hashlib.sha256(seed).digest()) * 128
        for k in range(n):
            part.ioctl(6, k)
            part.writeblocks(k, block, 0)
    finally:
        b.close()


def run_update(
    payload,
    version=2,
    runtime="micropython",
    workdir="/tmp/rmota-run",
    board_id=b"unix",
    image=None,
    faults=None,
    emu_options=None,
    passive=False,
    max_boots=4,
    timeout_s=600,
    echo=None,
    job_id=JOB_ID,
    fw_version="2.0.0",
):
    """Provision a fresh flash with ``factory_image()`` (version 1), serve ``image``
    (default: ``payload`` wrapped as an rmota image for ``board_id`` and ``version``)
    at a 1,083-character presigned-style URL, announce it as a RainMaker job (pending for
    ``AT+RMOTAFETCH``, or pushed as a URC with ``passive``), and run the agent process
    until it exits 0 (a reboot, exit 75, starts it again, at most ``max_boots``).
    ``echo``: a function called with each line the agent prints. Returns ``Result``."""
    os.makedirs(workdir, exist_ok=True)
    flash = os.path.join(workdir, "flash.bin")
    unix_board.provision(flash, factory_image(), FACTORY_VERSION)
    dirty_slot(flash, 1)
    if image is None:
        image = make_image(payload, board_id, version)
    srv = HTTPFiles().start()
    port = PtyPort()
    emu = ESPEmulator(
        port, http_base=srv.base_url, faults=faults or Faults(0), **(emu_options or {})
    )
    r = Result()
    r.output = []
    r.exit_codes = []
    t0 = time.monotonic()
    try:
        srv.add(OBJECT_PATH, image)
        url = presigned_url("127.0.0.1:%d" % srv.port, OBJECT_PATH)
        emu.start()
        emu.push_job(url, len(image), fw_version, job_id, passive=passive)
        cmd = _runtime_cmd(runtime)
        env = _env(runtime, flash, port.slave_path)
        for boot in range(max_boots):
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
            )
            try:
                for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip("\n")
                    r.output.append(line)
                    if echo:
                        echo(line)
                    if time.monotonic() - t0 > timeout_s:
                        proc.kill()
                code = proc.wait(timeout=max(1, timeout_s - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            r.exit_codes.append(code)
            if code != REBOOT:
                break
        r.elapsed_s = time.monotonic() - t0
    finally:
        emu.stop()
        port.close()
        srv.stop()
    r.boots = len(r.exit_codes)
    r.results = list(emu.results)
    r.final_status = emu.job_status
    r.job_finished = emu.job is None
    r.http_requests = emu.http_requests
    r.wire_rx = len(emu.rx)
    r.wire_tx = len(emu.tx)
    r.emu = emu
    b = unix_board.Board(flash, boot=False)
    try:
        rec = b.loader.record
        r.slot = rec.active
        r.image_len = rec.lengths[rec.active]
        buf = bytearray(r.image_len)
        b.slots[rec.active].readblocks(0, buf)
        r.slot_sha256 = hashlib.sha256(buf).digest()
        r.record = rec
    finally:
        b.close()
    return r
