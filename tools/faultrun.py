"""Fault scenarios of the host OTA, run in one process on a virtual clock (issue 3).

Runs under the MicroPython unix port and under CPython. One scenario = a small image, a
seeded mix of ESP/network/server faults (``tools/espsim.py``) and host power cuts; the
agent (``rmota.agent.HostOTA``) runs on the desktop board (``boards/unix``) whose NOR
flash file lives in /dev/shm. A reboot (``SystemExit(75)``) or a power cut (a torn flash
operation, or an instant in virtual time) drops the board, link and agent objects and
powers a new board on over the same flash file: the boot logic runs, the agent starts
again; the ESP model keeps running (bytes in flight while the host is off are lost).

After every power-on and at the end the invariants are checked: no bricked board, no
commit of an image other than the expected one, a truthful final status (2 with the new
image running and confirmed; 3 or 5 for scenarios whose fault is permanent), no
unhandled exception. Each scenario prints one line ``R <json>`` (see ``Scenario.result``).

Usage::

    micropython tools/faultrun.py 1 2 3            # scenarios by seed
    micropython tools/faultrun.py -v 1234          # one, with the agent's log and faults
    python tools/faultrun.py --exhaustive          # a cut at every flash operation
    python tools/faultrun.py --exhaustive --cut 17 -v   # only cut point 17
    python tools/faultrun.py --settings '{"faithful": true}' 1 2 3   # board settings

``tools/faults.py`` runs batches of these under both runtimes and prints the table.
"""

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_root = _here + "/.."
for _p in ("/boards/unix", "/lib", "/tools"):
    if _root + _p not in sys.path:
        sys.path.insert(0, _root + _p)

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import board as unix_board  # noqa: E402
from bootrec import Bricked  # noqa: E402
from espsim import PRNG, ESPSim, Faults  # noqa: E402
from nor import NORFlash  # noqa: E402
from rmota.agent import for_board  # noqa: E402
from rmota.compat import VirtualClock  # noqa: E402
from rmota.image import HEADER_SIZE, build_header  # noqa: E402
from rmota.log import Logger  # noqa: E402

IS_MP = sys.implementation.name == "micropython"
RUNTIME = "micropython" if IS_MP else "cpython"

FACTORY_VERSION = 1
NEW_VERSION = 2
JOB_ID = "tP8HKQDLM7ToThwNScgrLR"
IMAGE_PATH = "/users/GitHub_U8JZpDE0iGXlD6gNCFbaEP/firmwareimages/ja76RnICh/AT_OTA_TEST_2.bin"
BAUD = 115200

MAX_BOOTS = 60  # power-ons per scenario
MAX_CYCLES = 4  # times the agent may go idle with the job still open (it reported 3)
CYCLE_GAP_MS = 60000  # then the cloud sends the notification again after this long
MAX_VIRTUAL_MS = 4 * 3600 * 1000
SKIP_MS = 20  # longest virtual sleep of an idle poll when the ESP has nothing due

# Fault kinds. Transient ones go away by themselves: the job must end with status 2.
TRANSIENT = (
    "drop",
    "dup",
    "flip",
    "truncate",
    "esp_reboot",
    "wifi_drop",
    "cloud_drop",
    "http_error",
    "url_expiry",
    "ignore_range",
    "slow_server",
    "server_stall",
    "esp_stall",
    "esp_silence",
    "busy",
    "lose_url_byte",
    "short_record",
    "mangle_final",
    "result_refused",
    "damaged_header",
)
# Permanent ones: the job must end with the truthful status, never 2.
PERMANENT = {
    "refused_403": 3,
    "missing_404": 3,
    "bad_digest": 3,
    "wrong_board": 5,
    "same_version": 5,
}
CUT_KINDS = ("power_cut_op", "power_cut_time")
# Fault log entries (tools/espcore.py Faults, and host power cuts) that can make the agent
# fetch image bytes again: refetch_stats shares a request's bytes among them.
INTERRUPTIONS = (
    "drop",
    "dup",
    "flip",
    "reboot_at_out",
    "reboot_at_body",
    "reboot",
    "wifi_drop",
    "truncate_body",
    "short_record",
    "damage_record",
    "lose_record",
    "silence_at_body",
    "stall_at_body",
    "server_stall",
    "power_cut",
)


class PowerCut(BaseException):
    """The host lost power (not an ``Exception``: the agent's ``poll()`` must not catch
    it)."""


class _Run:
    # Flash-operation bookkeeping shared by the NOR objects of one scenario (one per boot).
    def __init__(self):
        self.ops = 0  # flash operations so far, all boots
        self.cuts = {}  # global op index -> byte index (None: pseudo-random in the op)
        self.fired = False
        self.op_log = None  # list of (kind, length) when counting
        self.on_cut = None  # called at the instant of a cut (the host goes dark)
        self.stall_hook = None  # flash operations take time (faithful board settings)

    def byte_for(self, g, length):
        b = self.cuts[g]
        if b is None:
            b = PRNG(g * 7919 + 13).randint(0, length)
        return b if b <= length else length


class CutNOR(NORFlash):
    """The board's NOR model whose power cut raises ``PowerCut`` (and closes the file so
    every later operation fails) instead of ending the process. Operations are counted
    over all boots of a scenario; a cut is armed on the operation whose global index is
    in ``run.cuts``, torn at a byte chosen knowing its length."""

    def __init__(self, path, size, run):
        NORFlash.__init__(self, path, size)
        self.run = run
        self.stall_hook = run.stall_hook  # the board sets erase/program times if faithful

    def _arm(self, kind, length):
        run = self.run
        g = run.ops
        run.ops = g + 1
        if run.op_log is not None:
            run.op_log.append((kind, length))
        if g in run.cuts:
            self.cut_at(self.op_count, run.byte_for(g, length))

    def program(self, addr, data):
        self._arm("program", len(data))
        NORFlash.program(self, addr, data)

    def erase(self, sector):
        self._arm("erase", self.sector_size)
        NORFlash.erase(self, sector)

    def power_cut(self):
        run = self.run
        run.fired = True
        self.close()
        if run.on_cut is not None:
            run.on_cut()  # whatever still runs after this cannot reach the wire
        raise PowerCut()


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def _shm_dir():
    for d in ("/dev/shm", "/tmp"):
        try:
            os.stat(d)
            return d
        except OSError:
            pass
    return "."


def _tag():
    return "".join("%02x" % b for b in os.urandom(4))


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _copy(src, dst):
    buf = bytearray(65536)
    mv = memoryview(buf)
    with open(src, "rb") as fi:
        with open(dst, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(mv[:n])


def factory_image():
    """Version 1 of a small application, provisioned in slot 0."""
    return b"rmota factory application v1\n" * 512


def payload_bytes(n, seed):
    """``n`` deterministic pseudo-random bytes (same on both runtimes)."""
    out = bytearray(n)
    k = 0
    i = 0
    while i < n:
        d = hashlib.sha256(b"rmota-fault-%d-%d" % (seed, k)).digest()
        m = n - i if n - i < 32 else 32
        out[i : i + m] = d[:m]
        i += m
        k += 1
    return bytes(out)


class Flash:
    """A provisioned flash file (factory image in slot 0, confirmed; leftovers of an
    older download in slot 1, so a missing erase shows; the journal area formatted),
    made once per process and copied for each scenario."""

    def __init__(self):
        d = _shm_dir()
        t = _tag()
        self.template = "%s/rmota_faults_%s_tpl.bin" % (d, t)
        self.path = "%s/rmota_faults_%s.bin" % (d, t)
        unix_board.provision(self.template, factory_image(), FACTORY_VERSION)
        b = unix_board.Board(self.template, boot=False)
        try:
            part = b.slots[1]
            junk = hashlib.sha256(b"old").digest() * 128
            for k in range(64):  # the first 256 KB: more than any scenario's image
                part.ioctl(6, k)
                part.writeblocks(k, junk, 0)
            b.journal.load()  # formats the littlefs journal area
        finally:
            b.close()

    def fresh(self):
        _copy(self.template, self.path)
        return self.path

    def remove(self):
        _rm(self.template)
        _rm(self.path)


# ------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------
def make_scenario(seed, size=None, kinds=None, cuts=None, faults=None):
    """The scenario of ``seed`` (a dict of JSON types, the same on both runtimes):
    ``size`` (payload bytes), ``kinds`` (fault kinds), ``faults`` (their parameters),
    ``cuts`` (host power cuts: ``["op", global flash operation, byte or None]`` or
    ``["t", virtual ms, ms off]``), ``expect`` (2, 3 or 5). ``size``/``kinds``/``cuts``/
    ``faults`` override the random choice (deterministic tests)."""
    r = PRNG(seed)
    if size is None:
        # a few KB to ~64 KB, small ones more often
        size = r.randint(2048, 16384) if r.chance(1, 2) else r.randint(16384, 65536)
    total = size + HEADER_SIZE
    dl_ms = total * 10000 // BAUD + 300  # one clean download at the baud rate, roughly
    if kinds is None:
        kinds = []
        if r.chance(1, 10):
            kinds.append(r.choice(sorted(PERMANENT)))
        n = r.randint(0, 4)
        for _ in range(n):
            k = r.choice(TRANSIENT)
            if k not in kinds:
                kinds.append(k)
    if cuts is None:
        cuts = []
        for _ in range(r.randint(0, 3) if r.chance(2, 3) else 0):
            if r.chance(1, 2):
                # an operation of the whole run: slot erases and programs, journal, boot record
                cuts.append(["op", r.randint(0, 2 * (total // 4096) + 40), None])
            else:
                cuts.append(["t", r.randint(0, 3 * dl_ms + 2000), r.randint(10, 3000)])
    f = {}
    for k in kinds:
        _fault_params(r, k, total, dl_ms, f)
    if faults is not None:
        f = faults
    expect = 2
    for k in kinds:
        if k in PERMANENT:
            expect = PERMANENT[k]
    return {
        "seed": seed,
        "size": size,
        "kinds": kinds,
        "faults": f,
        "cuts": cuts,
        "expect": expect,
        "sim_seed": r.randint(0, 1 << 30),
    }


def _fault_params(r, k, total, dl_ms, f):
    body = r.randint(0, total - 1)
    if k in ("drop", "dup", "flip"):
        if r.chance(2, 3):
            f[k + "_body_at"] = [body]
        else:  # anywhere on the wire: notification, echo, prompts, finals, records
            f[k + "_at"] = [r.randint(0, total + 3000)]
    elif k == "truncate":
        f["truncate_body_at"] = body
        f["truncate_final"] = "OK" if r.chance(2, 3) else None
    elif k == "esp_reboot":
        if r.chance(1, 2):
            f["reboot_at_body"] = body
        else:
            f["reboot_t"] = r.randint(0, 2 * dl_ms)
    elif k in ("wifi_drop", "cloud_drop"):
        down = r.randint(100, 30000)
        if r.chance(1, 2):
            f[k + "_at_body"] = body
            f[k[:-5] + "_down_ms"] = down
        else:
            f[k + "_t"] = [r.randint(0, 2 * dl_ms), down]
    elif k == "http_error":
        f["fail_next"] = [r.choice((403, 404, 416, 500)) for _ in range(r.randint(1, 2))]
    elif k == "url_expiry":
        f["expire_ms"] = r.randint(300, 2 * dl_ms)
    elif k == "ignore_range":
        f["ignore_range"] = -1
    elif k == "slow_server":
        f["rate_bps"] = r.randint(2000, 20000)
    elif k == "server_stall":
        f["server_stall_at"] = body
        f["server_stall_ms"] = r.randint(200, 4500) if r.chance(1, 2) else r.randint(5000, 60000)
    elif k == "esp_stall":
        f["stall_at_body"] = body
        f["stall_ms"] = r.randint(50, 15000)
    elif k == "esp_silence":
        f["silence_at_body"] = body
        f["silence_ms"] = r.randint(500, 30000)
    elif k == "busy":
        f["busy_next"] = r.randint(1, 3)
        if r.chance(1, 3):
            f["busy_then_run_ms"] = r.randint(10, 1500)
    elif k == "lose_url_byte":
        f["lose_url_byte"] = r.randint(0, 1082)
    elif k == "short_record":
        f["short_record"] = [r.randint(0, 8), r.randint(1, 40)]
    elif k == "damaged_header":
        # a byte of a record's header or CRLF altered or lost (-1)
        f["damage_record"] = [r.randint(0, 8), r.randint(-2, 14), r.randint(-1, 255)]
    elif k == "mangle_final":
        f["mangle_final"] = r.choice(("\r\nO\r\n", "\r\nOK", "\r\nERR\r\n"))
    elif k == "result_refused":
        f["refuse_result"] = r.randint(1, 2)
        f["refuse_result_ms"] = r.randint(200, 40000)
    elif k == "refused_403":
        f["fail_always"] = 403
    elif k == "missing_404":
        f["fail_always"] = 404
    elif k == "bad_digest":
        f["corrupt_at"] = r.randint(HEADER_SIZE, total - 1)
    elif k == "wrong_board":
        f["board_id"] = "rp2-pico"
    elif k == "same_version":
        f["version"] = FACTORY_VERSION


_SIM_FAULT_KEYS = (
    "drop_at",
    "dup_at",
    "flip_at",
    "drop_body_at",
    "dup_body_at",
    "flip_body_at",
    "reboot_at_body",
    "truncate_body_at",
    "stall_at_body",
    "stall_ms",
    "silence_at_body",
    "silence_ms",
    "wifi_drop_at_body",
    "wifi_down_ms",
    "cloud_drop_at_body",
    "cloud_down_ms",
    "busy_next",
    "busy_then_run_ms",
    "lose_url_byte",
    "refuse_result",
    "refuse_result_ms",
)


def _median(xs):
    if not xs:
        return 0
    s = sorted(xs)
    return s[len(s) // 2]


# ------------------------------------------------------------------------------------------
# Running one scenario
# ------------------------------------------------------------------------------------------
class Scenario:
    """One run of scenario dict ``sc`` on a fresh copy of ``flash`` (``Flash``).
    ``verbose``: print the agent's log and the faults that fired. ``op_log``: a list to
    fill with every flash operation ``(kind, length)`` (exhaustive mode counts them)."""

    def __init__(self, sc, flash, verbose=False, op_log=None, trace=False):
        self.sc = sc
        self.settings = sc.get("settings") or {}
        self._stall_us = 0
        self.flash = flash
        self.verbose = verbose
        self.clock = VirtualClock()
        self.run_ = _Run()
        self.run_.op_log = op_log
        self.violations = []
        self.log = []
        self.agents = []
        self.board = None
        self.boots = 0
        self.cuts_fired = 0
        self.reboots = 0
        self.unhandled = 0
        self.bricked = 0
        self.unverified = 0
        self.committed = False
        self.cycles = 0
        self.stalled = 0
        self.trace = trace
        self.t_cuts = []
        self._cut_what = None
        f = sc["faults"]
        for c in sc["cuts"]:
            if c[0] == "op":
                self.run_.cuts[c[1]] = c[2]
            else:
                self.t_cuts.append((c[1], c[2]))
        self.t_cuts.sort()
        payload = payload_bytes(sc["size"], sc["seed"])
        board_id = f.get("board_id", "unix").encode()
        version = f.get("version", NEW_VERSION)
        img = bytearray(build_header(payload, board_id, version) + payload)
        if "corrupt_at" in f:
            img[f["corrupt_at"]] ^= 0x20
        self.image = bytes(img)
        self.payload_sha = hashlib.sha256(payload).digest()
        self.factory_sha = hashlib.sha256(factory_image()).digest()

    def _say(self, *a):
        if self.verbose:
            print(*a)

    def _logsink(self, line):
        if self.verbose:
            print("  %8d %s" % (self.clock.now_ms, line))
        else:
            self.log.append(line)
            if len(self.log) > 60:
                self.log = self.log[-30:]

    def _make_sim(self):
        sc = self.sc
        f = sc["faults"]
        kw = {}
        for k in _SIM_FAULT_KEYS:
            if k in f:
                kw[k] = f[k]
        if "truncate_final" in f:
            kw["truncate_final"] = None if f["truncate_final"] is None else b"\r\nOK\r\n"
        if "mangle_final" in f:
            kw["mangle_final"] = f["mangle_final"].encode()
        if "short_record" in f:
            sr = f["short_record"]  # [index, extra], or a list of them
            kw["short_record"] = dict(sr if sr and isinstance(sr[0], list) else [sr])
        if "damage_record" in f:
            kw["damage_record"] = {f["damage_record"][0]: f["damage_record"][1:]}
        if "lose_record" in f:
            kw["lose_record"] = set(f["lose_record"])
        faults = Faults(sc["seed"], **kw)
        st = self.settings
        fifo = None
        if st.get("faithful"):
            # the host's UART keeps uart_rxbuf bytes; flash operations take real NOR time
            resolved = dict(unix_board.DEFAULT_SETTINGS, **st)
            fifo = st.get("uart_rxbuf") or unix_board.plan_flash(resolved)["uart_rxbuf"]
            self.run_.stall_hook = self._flash_stall
        sim = ESPSim(
            self.clock,
            seed=sc["sim_seed"],
            baud=st.get("baud", BAUD),
            faults=faults,
            trace=self.trace,
            rx_fifo=fifo,
            host_cts=bool(st.get("flow_control")),
        )
        srv = sim.server
        srv.add(IMAGE_PATH, self.image)
        if "fail_next" in f:
            srv.fail_next = list(f["fail_next"])
        if "fail_always" in f:
            srv.fail_always = f["fail_always"]
        if "expire_ms" in f:
            srv.expire_ms = f["expire_ms"]
        if "ignore_range" in f:
            srv.ignore_range = f["ignore_range"]
        if "rate_bps" in f:
            srv.rate_bps = f["rate_bps"]
        if "server_stall_at" in f:
            srv.stall_at = f["server_stall_at"]
            srv.stall_ms = f["server_stall_ms"]
        if "reboot_t" in f:
            sim.schedule_reboot(f["reboot_t"])
        if "wifi_drop_t" in f:
            sim.schedule_outage(f["wifi_drop_t"][0], f["wifi_drop_t"][1], wifi=True)
        if "cloud_drop_t" in f:
            sim.schedule_outage(f["cloud_drop_t"][0], f["cloud_drop_t"][1], wifi=False)
        sim.on_result = self._on_result
        sim.push_job(IMAGE_PATH, len(self.image), "2.0.0", JOB_ID, passive=False)
        return sim

    # --- invariants -----------------------------------------------------------------
    def _violation(self, what):
        if what not in self.violations:
            self.violations.append(what)
        self._say("VIOLATION:", what)

    def _check_boot(self, b):
        # After a power-on: the record names an image we know, and the boot logic did not
        # have to fall back from a slot that fails its check.
        ld = b.loader
        rec = ld.record
        d = rec.digests[ld.running]
        if ld.fell_back is not None:
            self.unverified += 1
            self._violation("boot fell back: %s" % ld.fell_back)
        if d == self.payload_sha:
            self.committed = True
            if self.sc["expect"] != 2:
                self.unverified += 1
                self._violation("a refused image was committed")
        elif d != self.factory_sha:
            self.unverified += 1
            self._violation("running slot %d holds an unknown image" % ld.running)

    def _on_result(self, job_id, status, info):
        self._say("  %8d RESULT %d %s" % (self.clock.now_ms, status, info))
        if status == 2:
            b = self.board
            ok = False
            if b is not None:
                st = b.boot_state()
                d = b.loader.record.digests[st["slot"]]
                ok = d == self.payload_sha and not st["trial"] and self.sc["expect"] == 2
            if not ok:
                self._violation("status 2 reported while the new image is not running confirmed")
        elif status == 5 and self.sc["expect"] != 5:
            self._violation("status 5 reported for a good image")

    # --- the loop -------------------------------------------------------------------
    def _power_on(self):
        """A new board over the flash file (the boot logic runs), a link and an agent.
        Returns the agent, None after a cut during boot, False when bricked."""
        self.boots += 1
        run = self.run_
        run.fired = False
        try:
            nor = CutNOR(self.flash.path, unix_board.FLASH_SIZE, run)
        except OSError as e:
            self._violation("flash file: %r" % (e,))
            return False
        try:
            b = unix_board.Board(
                self.flash.path, clock=self.clock, nor=nor, settings=self.settings
            )
        except PowerCut:
            self._cut_fired()
            self._say(
                "  %8d POWER CUT during boot, flash op %d" % (self.clock.now_ms, run.ops - 1)
            )
            return None
        except Bricked as e:
            nor.close()
            if run.fired:
                self._cut_fired()
                return None
            self.bricked += 1
            self._violation("bricked: %s" % e.reason)
            return False
        except Exception as e:
            nor.close()
            if run.fired:
                self._cut_fired()
                return None
            self._unhandled("power-on: %r" % (e,))
            return False
        if run.fired:
            self._cut_fired()
            return None
        self._check_boot(b)
        self.board = b
        # the board's UART is the ESP model; the link is sized from the board's settings
        agent = for_board(
            b, uart=self.sim, clock=self.clock, log=Logger("rmota", sink=self._logsink)
        )
        self.agents.append(agent)
        st = b.boot_state()
        self._say(
            "  %8d power on: slot %d%s, op %d"
            % (self.clock.now_ms, st["slot"], " (trial)" if st["trial"] else "", run.ops)
        )
        return agent

    def _drive(self, agent):
        # Poll until idle, a reboot, a power cut or the time bound. Returns the reason.
        clk = self.clock
        sim = self.sim
        run = self.run_
        while True:
            now = clk.now_ms
            if self.t_cuts and now >= self.t_cuts[0][0]:
                self.t_cuts.pop(0)
                self.board.nor.close()
                self._cut_what = "at %d ms" % now
                return "cut"
            if now > MAX_VIRTUAL_MS:
                return "timeout"
            err0 = agent.last_error
            try:
                n = agent.poll()
            except PowerCut:
                return "cut"
            except SystemExit as e:
                if run.fired:
                    return "cut"
                code = e.args[0] if e.args else None
                if code == unix_board.REBOOT_EXIT_CODE:
                    return "reboot"
                self._unhandled("SystemExit(%r)" % (code,))
                return "error"
            except Exception as e:  # escaped the agent's poll(): a defect
                if run.fired:
                    return "cut"
                self._unhandled(repr(e))
                if self.verbose:
                    sys.print_exception(e) if IS_MP else _print_tb()
                return "error"
            if run.fired:
                # The flash died under the agent (littlefs turns the cut into OSError,
                # which the agent may catch): not a defect of the agent.
                agent.last_error = err0
                return "cut"
            if agent.idle and not sim.in_flight():
                return "idle"
            if not n:
                d = sim.next_event_ms()
                clk.sleep_ms(SKIP_MS if d is None or d > SKIP_MS else (d or 1))

    def _unhandled(self, what):
        self.unhandled += 1
        self._violation("unhandled: %s" % what)

    def _flash_stall(self, us):
        # An erase or program keeps the host busy: virtual time passes, the UART fills.
        self._stall_us += us
        ms = self._stall_us // 1000
        if ms:
            self._stall_us -= ms * 1000
            self.sim.host_busy(ms, self.settings.get("uart_irq_off_fifo"))

    def _dark(self):
        self.sim.host_power(False)

    def _host_off(self, ms):
        self.board = None
        self.sim.host_power(False)
        self.clock.sleep_ms(ms)
        self.sim.host_power(True)

    def run(self):
        """Run the scenario; returns the result dict."""
        t0 = time.ticks_ms() if IS_MP else time.time()
        self.flash.fresh()
        self.sim = sim = self._make_sim()
        self.run_.on_cut = self._dark
        agent = None
        outcome = None
        while True:
            if self.boots >= MAX_BOOTS or self.clock.now_ms > MAX_VIRTUAL_MS:
                self._violation("no end after %d boots, %d ms" % (self.boots, self.clock.now_ms))
                break
            if agent is None:
                agent = self._power_on()
                if agent is False:
                    break
                if agent is None:
                    self._host_off(PRNG(self.boots).randint(10, 2000))
                    continue
            outcome = self._drive(agent)
            if outcome == "idle":
                err = getattr(agent, "last_error", None)
                if sim.job is None:
                    break
                if self.sc["expect"] == 3 and sim.job_status == 3:
                    break
                self.cycles += 1
                if sim.job_status != 3:
                    # idle although the job is open and no failure was reported: only a
                    # new notification can move it now
                    self.stalled += 1
                if self.cycles >= MAX_CYCLES:
                    break
                # The agent waits for the next notification (issue 3: "report 3 and wait
                # for the next notification"): the cloud sends it again later.
                self._say(
                    "  %8d idle with the job open; the cloud notifies again in %d s"
                    % (self.clock.now_ms, CYCLE_GAP_MS // 1000)
                )
                self.clock.sleep_ms(CYCLE_GAP_MS)
                sim.renotify()
                continue
            if outcome == "reboot":
                self.reboots += 1
                self._say("  %8d reboot" % self.clock.now_ms)
                agent = None
                self._host_off(50)
                continue
            if outcome == "cut":
                self._cut_fired()
                what = self._cut_what or "in flash op %d" % (self.run_.ops - 1)
                self._cut_what = None
                self._say("  %8d POWER CUT %s" % (self.clock.now_ms, what))
                agent = None
                self._host_off(PRNG(self.boots + 77).randint(10, 3000))
                continue
            break  # error or timeout
        if outcome == "timeout":
            self._violation("virtual time bound reached")
        for a in self.agents:
            err = getattr(a, "last_error", None)
            if err:
                self._unhandled("agent error: %s" % err)
                break
        self._final_check()
        dt = (time.ticks_diff(time.ticks_ms(), t0) / 1000) if IS_MP else (time.time() - t0)
        return self.result(dt)

    def _final_check(self):
        # Power the board on once more without the agent: what would boot now.
        sc = self.sc
        sim = self.sim
        self.board = None
        nor = NORFlash(self.flash.path, unix_board.FLASH_SIZE)
        try:
            b = unix_board.Board(self.flash.path, clock=self.clock, nor=nor)
        except Bricked as e:
            self.bricked += 1
            self._violation("bricked at the end: %s" % e.reason)
            nor.close()
            return
        self._check_boot(b)
        st = b.boot_state()
        d = b.loader.record.digests[st["slot"]]
        nor.close()
        statuses = [s for _, s, _ in sim.results]
        want = sc["expect"]
        self.final = sim.job_status
        ok = True
        if want == 2:
            ok = sim.job is None and sim.job_status == 2 and d == self.payload_sha
            ok = ok and not st["trial"]
        elif want == 3:
            ok = sim.job_status == 3 and 2 not in statuses and 5 not in statuses
            ok = ok and d == self.factory_sha
        else:
            ok = sim.job is None and sim.job_status == 5 and 2 not in statuses
            ok = ok and d == self.factory_sha
        self.correct = ok
        if not ok:
            self._violation(
                "final status %r (want %d), results %r, running %s%s"
                % (
                    sim.job_status,
                    want,
                    statuses,
                    "new" if d == self.payload_sha else "old",
                    " on trial" if st["trial"] else "",
                )
            )

    def _cut_fired(self):
        # A host power cut fired: counted, and logged with the ESP's faults (an
        # interruption for refetch_stats).
        self.cuts_fired += 1
        sim = getattr(self, "sim", None)
        if sim is not None:
            sim.faults.log.append(("power_cut", self.clock.now_ms))

    def interruptions(self, a, b):
        """How many events in the fault log's entries ``a`` to ``b`` (indices) could make
        the agent fetch image bytes again (``INTERRUPTIONS``; a wire fault that hit no
        download's bytes does not count)."""
        log = self.sim.faults.log
        outside = self.sim.faults.outside
        n = 0
        last = None  # the previous wire fault's position: a burst is one interruption
        for i in range(a, b):
            kind = log[i][0]
            if kind not in INTERRUPTIONS or i in outside:
                continue
            if kind in ("drop", "dup", "flip"):
                if last is not None and 0 <= log[i][1] - last <= 64:
                    last = log[i][1]
                    continue
                last = log[i][1]
            n += 1
        return n

    def refetch_stats(self):
        """Image bytes fetched again per interruption, from the server's log: for each
        GET after the first, the bytes of its body below the furthest stream offset
        that earlier GETs had delivered to the host (``reached``). A GET of the whole
        file, of the 64-byte header alone, or of all after the header, made after the
        host had the whole image (a digest failure, a refused header checked again),
        counts as a full restart (not a bounded one: a hole at the start; in window
        mode, which keeps no holes, a GET of the first window does too), a GET
        whose Range the server ignored in its own column; after a full restart only what
        later GETs delivered counts as reached. A GET that goes on right where a bounded
        one ended whole (the image after the header fetched alone, the next window),
        asking again only for the 16-byte overlap, follows no interruption and is not
        counted; nor is one without a Range after the server ignored one (the agent
        then downloads whole files: those bytes go with the ignored ones). Returns
        (list of bytes per interruption, full restarts, bytes re-sent because a Range
        was ignored, list of bytes per counted request).

        One request may make up for several interruptions (two records lost in one
        response leave one hole, fetched with one request), and one interruption may
        take several (the hole, then a 16-byte check of the bytes ahead). So counted
        requests are grouped: a group starts with a request after which the fault log
        (``interruptions()``) shows new interruptions, and takes the counted requests
        after it until the next such one; its bytes are shared out evenly among its
        interruptions (at least one). A group is one recovery until one of its requests
        gets back to where the download had got to before it began: interruptions
        before that (a power cut while a hole is fetched) join it rather than start a
        group that would pay for the earlier ones' holes. The bytes of each request are
        returned as well."""
        total = len(self.image)
        windowed = any(getattr(a, "flash_mode", None) == "window" for a in self.agents)
        per = []
        restarts = 0
        ignored = 0
        reached = -1
        prev = None
        ignoring = False  # the server ignored a Range: full downloads from then on
        per_request = []
        since = 0  # fault log entries before this are accounted for
        group = None  # [bytes, interruptions] of the requests since the last interruption

        def close(g):
            if g is not None:
                per.extend([(g[0] + g[1] - 1) // g[1]] * g[1])

        for q in self.sim.server.requests:
            if q["start"] is None or q["path"] != IMAGE_PATH:
                continue
            a = q["start"]
            b = a + q["sent"]
            planned = (
                prev is not None
                and prev["end"] is not None
                and not prev["ignored"]
                and prev["start"] + prev["sent"] == prev["end"] + 1
                and prev["end"] + 1 - 16 <= a <= prev["end"] + 1
                and reached <= prev["end"] + 1
            )
            prev = q
            ignoring = ignoring or q["ignored"]
            if reached >= 0:
                dup = (reached if reached < b else b) - a
                if dup < 0:
                    dup = 0
                if planned:
                    pass  # the next window, or the image after its header: no interruption
                elif q["ignored"] or (ignoring and q["range"] is None):
                    ignored += dup
                elif (
                    a <= 64
                    and reached >= total
                    and (
                        q["end"] is None
                        or q["end"] < 64
                        or q["end"] >= total - 1
                        or windowed  # (no holes in window mode: the first window)
                    )
                ):
                    restarts += 1
                    reached = -1  # the agent dropped everything: count from this GET on
                    since = q["faults_before"]
                    close(group)
                    group = None
                else:
                    k = self.interruptions(since, q["faults_before"])
                    since = q["faults_before"]
                    per_request.append(dup)
                    if k and group is not None and group[2] >= 0:
                        # Interrupted again before the recovery got back to where the
                        # download had been (a hole still to fetch, or a power cut
                        # while fetching it): one recovery, shared by all of them.
                        group[0] += dup
                        group[1] += k
                    elif k or group is None:
                        close(group)
                        group = [dup, k or 1, reached]
                    else:
                        group[0] += dup
                    if q["reached"] >= group[2]:
                        group[2] = -1  # back where it had been: the recovery is over
            if q["reached"] > reached:
                reached = q["reached"]
        close(group)
        return per, restarts, ignored, per_request

    def result(self, dt):
        per, restarts, ignored, per_request = self.refetch_stats()
        counters = {}
        for name in ("bytes_refetched", "resumes", "bytes_received", "attempts", "refetches"):
            counters[name] = sum(getattr(a, name, 0) or 0 for a in self.agents)
        return {
            "seed": self.sc["seed"],
            "runtime": RUNTIME,
            "size": self.sc["size"],
            "kinds": self.sc["kinds"],
            "cuts": len(self.sc["cuts"]),
            "cuts_fired": self.cuts_fired,
            "expect": self.sc["expect"],
            "final": self.sim.job_status,
            "statuses": [s for _, s, _ in self.sim.results],
            "correct": bool(getattr(self, "correct", False)),
            "committed": self.committed,
            "bricked": self.bricked,
            "unverified": self.unverified,
            "unhandled": self.unhandled,
            "violations": self.violations,
            "boots": self.boots,
            "reboots": self.reboots,
            "cycles": self.cycles,
            "stalled_idle": self.stalled,
            "uart_overflows": self.sim.overflows,
            "ops": self.run_.ops,
            "virtual_ms": self.clock.now_ms,
            "refetch": per,
            "refetch_requests": per_request,
            "full_restarts": restarts,
            "ignored_range_bytes": ignored,
            "requests": len(self.sim.server.requests),
            "counters": counters,
            "fired": [
                str(x[0]) for x in self.sim.faults.log if x[0] not in ("ready", "power_cut")
            ],
            "log_tail": [] if not self.violations else self.log[-12:],
            "real_s": dt,
        }


def _print_tb():
    import traceback

    traceback.print_exc()


# ------------------------------------------------------------------------------------------
# Exhaustive mode
# ------------------------------------------------------------------------------------------
EXHAUSTIVE_SIZE = 6000  # payload bytes: two erase blocks


def exhaustive_scenario(cut=None, settings=None):
    """The fault-free scenario of the exhaustive mode, with a cut at global flash
    operation ``cut`` (None: no cut), torn at a pseudo-random byte of it."""
    cuts = [] if cut is None else [["op", cut, None]]
    sc = make_scenario(0, size=EXHAUSTIVE_SIZE, kinds=[], cuts=cuts)
    sc["exhaustive_cut"] = cut
    if settings:
        sc["settings"] = settings
    return sc


def run_exhaustive(flash, only=None, verbose=False, out=print, settings=None):
    """Count the flash operations of a clean run, then cut the power at each in turn
    (or only at ``only``). Prints one ``R`` line per cut point and an ``X`` summary."""
    ops = []
    clean = Scenario(exhaustive_scenario(None, settings), flash, op_log=ops).run()
    out(
        "C "
        + json.dumps(
            {
                "ops": len(ops),
                "runtime": RUNTIME,
                "clean_ok": not clean["violations"],
                "kinds": _op_kinds(ops),
            }
        )
    )
    held = 0
    tried = 0
    points = range(len(ops)) if only is None else [only]
    for g in points:
        r = Scenario(exhaustive_scenario(g, settings), flash, verbose=verbose).run()
        r["cut_op"] = g
        r["op_kind"] = ops[g][0] if g < len(ops) else "?"
        r["op_len"] = ops[g][1] if g < len(ops) else 0
        tried += 1
        if not r["violations"]:
            held += 1
        out("R " + json.dumps(r))
    out("X " + json.dumps({"tried": tried, "held": held, "ops": len(ops), "runtime": RUNTIME}))
    return tried, held


def _op_kinds(ops):
    d = {}
    for k, _ in ops:
        d[k] = d.get(k, 0) + 1
    return d


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def main(argv):
    verbose = False
    exhaustive = False
    only = None
    trace = False
    settings = None
    seeds = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-v":
            verbose = True
        elif a == "--trace":
            trace = True
        elif a == "--exhaustive":
            exhaustive = True
        elif a == "--cut":
            i += 1
            only = int(argv[i])
        elif a == "--settings":
            i += 1
            settings = json.loads(argv[i])
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        elif a == "--range":
            lo, hi = int(argv[i + 1]), int(argv[i + 2])
            seeds.extend(range(lo, hi))
            i += 2
        else:
            seeds.append(int(a))
        i += 1
    flash = Flash()
    try:
        if exhaustive:
            run_exhaustive(flash, only, verbose, settings=settings)
            return 0
        for s in seeds:
            sc = make_scenario(s)
            if settings:
                sc["settings"] = settings
            if verbose:
                print("scenario", json.dumps(sc))
            sn = Scenario(sc, flash, verbose=verbose, trace=trace)
            try:
                r = sn.run()
            except Exception as e:  # a defect of the harness: report it as a failure
                r = {
                    "seed": s,
                    "runtime": RUNTIME,
                    "harness_error": repr(e),
                    "violations": ["harness error: %r" % (e,)],
                }
                if verbose:
                    sys.print_exception(e) if IS_MP else _print_tb()
            if verbose:
                print("faults fired:", sn.sim.faults.log if hasattr(sn, "sim") else None)
                if trace:
                    print(sn.sim.format_trace())
            print("R " + json.dumps(r))
    finally:
        flash.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
