"""Run a whole host OTA on the desktop: HTTP server + ESP-AT emulator + the agent on the
unix board, rebooting it as often as it asks. Used by ``make demo`` (tools/demo.py), the
end-to-end tests and the field-case tests.

The agent runs either as its own process (MicroPython unix port or CPython; a reboot is
the process ending with exit code 75 and a new one starting) or in this process
(``Bench.run_inprocess``: a reboot is ``SystemExit(75)`` caught here and a new ``Board``
powered on), which lets tests look at the agent's counters.

Usage::

    from scenario import run_update
    r = run_update(payload, version=2, runtime="micropython", workdir="/tmp/x")
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(payload).digest()
"""

import hashlib
import json
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
    job is gone: status 2 or 5 was accepted), ``boots`` (agent starts),
    ``exit_codes``, ``slot`` (index the board boots), ``slot_sha256`` (digest of that
    slot's image as read back from the flash file), ``image_len``, ``record`` (the boot
    record), ``elapsed_s``, ``output`` (lines the agent printed), ``http_requests``,
    ``wire_rx``/``wire_tx`` (bytes the ESP received / sent), ``http_log`` (the HTTP
    server's request log: dicts with ``headers`` and ``status``), ``data_log`` (raw
    blocks the ESP read after prompts: ``ESPEmulator.data_log``), ``emu``, ``agents``
    (in-process runs: the agent objects, one per boot)."""


def factory_image():
    """The image provisioned in slot 0 before an update: version 1 of a small app."""
    return b"rmota factory application v1\n" * 512


def dirty_slot(flash, index=1, seed=b"old"):
    """Fill slot ``index`` with leftover bytes (an older, abandoned download), so that a
    missing erase before programming corrupts the new image instead of going unseen."""
    b = unix_board.Board(flash, boot=False)
    try:
        part = b.slots[index]
        block = bytes(hashlib.sha256(seed).digest()) * 128
        for k in range(part.ioctl(4, 0)):
            part.ioctl(6, k)
            part.writeblocks(k, block, 0)
    finally:
        b.close()


class Bench:
    """The desktop test bench for one OTA job. A context manager: on entry it provisions
    ``workdir/flash.bin`` (factory image, version 1, slot 1 dirty), serves ``image`` at a
    1,083-character presigned-style URL and announces the job through the emulator
    (pending for ``AT+RMOTAFETCH``, or pushed as a URC with ``passive``).

    ``settings``: board settings for the agent's board (dict; the process runs get them
    through ``RMOTA_SETTINGS``, ``boards/unix`` ``Board.from_env``), e.g. shorter waits
    for tests. ``job``: False to announce no host job at all."""

    def __init__(
        self,
        image,
        workdir,
        faults=None,
        emu_options=None,
        passive=False,
        job_id=JOB_ID,
        fw_version="2.0.0",
        settings=None,
        job=True,
    ):
        os.makedirs(workdir, exist_ok=True)
        self.settings = settings
        self.job = job
        self.image = image
        self.flash = os.path.join(workdir, "flash.bin")
        self.faults = faults or Faults(0)
        self.emu_options = emu_options or {}
        self.passive = passive
        self.job_id = job_id
        self.fw_version = fw_version
        self.result = Result()
        self.result.output = []
        self.result.exit_codes = []
        self.result.agents = []

    def __enter__(self):
        unix_board.provision(self.flash, factory_image(), FACTORY_VERSION)
        dirty_slot(self.flash, 1)
        self.srv = HTTPFiles().start()
        self.port = PtyPort()
        self.emu = ESPEmulator(
            self.port, http_base=self.srv.base_url, faults=self.faults, **self.emu_options
        )
        self.srv.add(OBJECT_PATH, self.image)
        self.url = presigned_url("127.0.0.1:%d" % self.srv.port, OBJECT_PATH)
        self.emu.start()
        if self.job:
            self.emu.push_job(
                self.url, len(self.image), self.fw_version, self.job_id, passive=self.passive
            )
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.result.elapsed_s = time.monotonic() - self.t0
        self.emu.stop()
        self.port.close()
        self.srv.stop()
        self._collect()

    def env(self, runtime):
        env = dict(os.environ)
        path = os.pathsep.join(os.path.join(ROOT, p) for p in ("lib", "boards/unix"))
        env["MICROPYPATH" if runtime == "micropython" else "PYTHONPATH"] = path
        env["RMOTA_FLASH"] = self.flash
        env["RMOTA_UART"] = self.port.slave_path
        if self.settings:
            env["RMOTA_SETTINGS"] = json.dumps(self.settings)
        return env

    def run_process(
        self, runtime="micropython", max_boots=4, timeout_s=600, echo=None, heap="512k", cuts=()
    ):
        """Run ``firmware/main.py`` as a process until it exits with anything but 75 (a
        reboot) or a power cut. ``cuts``: for the first boots, ``(op, byte)`` power cuts
        (``RMOTA_CUT``: the NOR model tears flash operation ``op`` after ``byte`` bytes and
        kills the process); a killed process is powered on again."""
        main = os.path.join(ROOT, "firmware", "main.py")
        if runtime == "micropython":
            cmd = [MICROPYTHON, "-X", "heapsize=" + heap, main]
        elif runtime == "cpython":
            cmd = [sys.executable, main]
        else:
            raise ValueError("runtime must be micropython or cpython")
        r = self.result
        deadline = time.monotonic() + timeout_s
        for boot in range(max_boots):
            env = self.env(runtime)
            if boot < len(cuts) and cuts[boot]:
                env["RMOTA_CUT"] = "%d,%d" % cuts[boot]
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
            )
            try:
                for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip("\n")
                    r.output.append(line)
                    if echo:
                        echo(line)
                    if time.monotonic() > deadline:
                        proc.kill()
                code = proc.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            r.exit_codes.append(code)
            killed = code in (-9, 137) and boot < len(cuts) and cuts[boot]
            if code != REBOOT and not killed:
                break
        return r

    def run_inprocess(
        self, settings=None, agent_kw=None, max_boots=4, timeout_ms=300000, board_factory=None
    ):
        """Run the agent in this process (CPython) until it is idle; a reboot
        (``SystemExit(75)``) powers a new ``Board`` on. ``board_factory(flash, uart)``
        may return a wrapped board (tests record calls)."""
        from rmota.agent import for_board
        from rmota.log import Logger

        r = self.result
        if settings is None:
            settings = self.settings
        for _ in range(max_boots):
            if board_factory:
                b = board_factory(self.flash, self.port.slave_path, settings)
            else:
                b = unix_board.Board(self.flash, self.port.slave_path, settings=settings)
            agent = for_board(b, log=Logger("rmota", sink=r.output.append), **(agent_kw or {}))
            r.agents.append(agent)
            try:
                agent.run(until_idle=True, timeout_ms=timeout_ms)
                r.exit_codes.append(0)
                b.close()
                break
            except SystemExit as e:
                r.exit_codes.append(e.code)
                if e.code != REBOOT:
                    raise
        return r

    def _collect(self):
        r = self.result
        emu = self.emu
        r.emu = emu
        r.boots = len(r.exit_codes)
        r.results = list(emu.results)
        r.final_status = emu.job_status
        r.job_finished = emu.job is None
        r.http_requests = emu.http_requests
        r.requests = list(self.srv.requests)
        r.wire_rx = len(emu.rx)
        r.wire_tx = len(emu.tx)
        r.http_log = list(self.srv.requests)
        r.data_log = list(emu.data_log)
        b = unix_board.Board(self.flash, boot=False)
        try:
            rec = b.loader.record
            r.record = rec
            r.slot = rec.active
            r.image_len = rec.lengths[rec.active]
            buf = bytearray(r.image_len)
            b.slots[rec.active].readblocks(0, buf)
            r.slot_sha256 = hashlib.sha256(buf).digest()
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
    cuts=(),
    **bench_kw,
):
    """One job end to end with the agent as a process (``runtime`` "micropython" or
    "cpython"). ``image`` defaults to ``payload`` wrapped for ``board_id`` and
    ``version``. Returns ``Result``."""
    if image is None:
        image = make_image(payload, board_id, version)
    with Bench(image, workdir, faults, emu_options, passive, **bench_kw) as bench:
        bench.run_process(runtime, max_boots, timeout_s, echo, cuts=cuts)
    return bench.result


def run_inprocess(
    payload,
    version=2,
    workdir="/tmp/rmota-run",
    board_id=b"unix",
    image=None,
    faults=None,
    emu_options=None,
    passive=False,
    settings=None,
    agent_kw=None,
    board_factory=None,
    **bench_kw,
):
    """The same job with the agent in this process (CPython). Returns ``Result`` with
    ``agents``."""
    if image is None:
        image = make_image(payload, board_id, version)
    with Bench(image, workdir, faults, emu_options, passive, **bench_kw) as bench:
        bench.run_inprocess(settings, agent_kw, board_factory=board_factory)
    return bench.result
