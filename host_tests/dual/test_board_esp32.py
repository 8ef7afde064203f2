"""The ESP32 board profile (boards/esp32/board.py) against fake ``esp32`` and ``machine``
modules (fake_esp32.py), under CPython (pytest) and the MicroPython unix port
(host_tests/mp_run.py test_board_esp32).

The end-to-end cases run the real agent (``rmota.agent.HostOTA`` over
``rmota.at.ATLink``) against the board and ``TinyESP``, a minimal scripted ESP-AT
responder: notification → download → commit (``set_boot``) → ``machine.reset()`` →
the simulated bootloader → confirm (``mark_app_valid_cancel_rollback``) → status 2;
and the rollback when the trial resets before it is confirmed → status 3."""

import hashlib
import os
import sys
import unittest

import fake_esp32
from fake_esp32 import Chip, ResetCalled
from rmota.agent import for_board
from rmota.compat import VirtualClock
from rmota.image import build_header
from rmota.log import Logger

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_ESP32_DIR = _HERE + "/../../boards/esp32"


def _load_esp32_board():
    """Import boards/esp32/board.py with the fakes in ``sys.modules``, without
    disturbing another ``board`` module (the unix one) that tests may have imported."""
    saved_fakes = fake_esp32.install()
    saved_board = sys.modules.pop("board", None)
    sys.path.insert(0, _ESP32_DIR)
    try:
        mod = __import__("board")
    finally:
        sys.path.pop(0)
        sys.modules.pop("board", None)
        if saved_board is not None:
            sys.modules["board"] = saved_board
        fake_esp32.uninstall(saved_fakes)
    return mod


esp32_board = _load_esp32_board()

_SEQ = [0]


def _tmp(tag):
    _SEQ[0] += 1
    rnd = "".join("%02x" % b for b in os.urandom(6))
    return "/tmp/rmota_esp32_%s_%s_%d" % (tag, rnd, _SEQ[0])


def _rm(*paths):
    for p in paths:
        for q in (p, p + ".tmp"):
            try:
                os.remove(q)
            except OSError:
                pass


def _rmdir(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        try:
            os.remove(path + "/" + n)
        except OSError:
            pass
    os.rmdir(path)


def _app(n, seed):
    """A stand-in ESP app image: magic byte 0xE9, then deterministic bytes."""
    out = bytearray(n)
    out[0] = 0xE9
    x = seed * 2654435761 + 12345
    for i in range(1, n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


def _split_params(s):
    """Split ESP-AT parameters at unescaped commas outside quotes; unquote strings."""
    out = []
    cur = bytearray()
    q = False
    i = 0
    while i < len(s):
        c = s[i]
        if c == 92 and i + 1 < len(s):  # backslash
            cur.append(s[i + 1])
            i += 2
            continue
        if c == 34:  # quote
            q = not q
        elif c == 44 and not q:  # comma
            out.append(bytes(cur))
            cur = bytearray()
        else:
            cur.append(c)
        i += 1
    out.append(bytes(cur))
    return out


class TinyESP:
    """A minimal ESP-AT RainMaker responder for one host OTA job (ESP-AT command set,
    HTTP AT and RainMaker AT commands, DESIGN.md section 1). It answers at once, inside
    ``uart.write``, and keeps its state (the pending job) across host resets.

    ``results``: ``(job, status, info)`` of every accepted ``AT+RMOTARESULT``."""

    def __init__(self, image, job="J1", version="2", chunks=(700, 2048, 1, 1500)):
        self.image = image
        self.job = job
        self.version = version
        self.url = b"https://s3.example.com/ota/fw.img?X-Amz-Expires=86400&a=1,2"
        self.chunks = chunks
        self.pending = True
        self.fail_gets = 0  # HTTPCGETs still to answer ERROR
        self.refuse = ()  # job ids whose results are answered ERROR
        self.results = []
        self.commands = []
        self.held_url = None
        self.uart = None
        self._line = bytearray()
        self._raw = 0  # URL bytes still expected after the '>' prompt
        self._rawbuf = bytearray()

    def attach(self, uart):
        self.uart = uart
        uart.on_write = self._on_write
        self._line = bytearray()
        self._raw = 0

    def _say(self, data):
        self.uart.feed(data)

    def _on_write(self, data):
        i = 0
        while i < len(data):
            if self._raw:
                k = min(self._raw, len(data) - i)
                self._rawbuf.extend(data[i : i + k])
                self._raw -= k
                i += k
                if not self._raw:
                    self.held_url = bytes(self._rawbuf)
                    self._say(b"\r\nSET OK\r\n")
                continue
            self._line.append(data[i])
            i += 1
            if self._line[-2:] == b"\r\n":
                line = bytes(self._line[:-2])
                self._line = bytearray()
                self.commands.append(line)
                self._command(line)

    def _command(self, line):
        ok = b"\r\nOK\r\n"
        if line in (b"AT", b"ATE0", b"AT+SYSLOG=1", b"AT+HTTPCHEAD=0"):
            self._say(ok)
        elif line == b"AT+RMOTAFETCH":
            self._say(ok)
            if self.pending:
                self._say(
                    b"+RMFWNOTIFY:0,%d," % len(self.image)
                    + self.url
                    + b","
                    + self.version.encode()
                    + b","
                    + self.job.encode()
                    + b"\r\n"
                )
        elif line.startswith(b"AT+HTTPURLCFG="):
            self._raw = int(line[14:])
            self._rawbuf = bytearray()
            self._say(b"\r\nOK\r\n\r\n>")
        elif line == b"AT+HTTPURLCFG?":
            u = self.held_url or b""
            self._say(b"+HTTPURLCFG:%d," % len(u) + u + b"\r\n" + ok)
        elif line.startswith(b'AT+HTTPCGET=""'):
            if self.held_url != self.url or self.fail_gets:
                self.fail_gets = max(self.fail_gets - 1, 0)
                self._say(b"\r\nERROR\r\n")
                return
            rx = int(_split_params(line[12:])[2]) if line.count(b",") >= 2 else 2048
            off = k = 0
            img = self.image
            while off < len(img):
                n = min(self.chunks[k % len(self.chunks)], rx, len(img) - off)
                k += 1
                self._say(b"+HTTPCGET:%d," % n + img[off : off + n] + b"\r\n")
                off += n
            self._say(ok)
        elif line.startswith(b"AT+RMOTARESULT="):
            p = _split_params(line[15:])
            status = int(p[2])
            if not self.pending or not 0 <= status <= 5 or p[1].decode() in self.refuse:
                self._say(b"\r\nERROR\r\n")
                return
            self.results.append((p[1].decode(), status, p[3].decode()))
            if status in (2, 5):
                self.pending = False
            self._say(ok)
        else:
            self._say(b"\r\nERROR\r\n")


class _Base(unittest.TestCase):
    def setUp(self):
        self.chip = Chip(slot_blocks=8)
        fake_esp32.use(self.chip)
        self.factory = _app(5000, 1)
        self.chip.flash("ota_0", self.factory)
        self.data_dir = _tmp("dir")
        self.log_lines = []

    def tearDown(self):
        _rmdir(self.data_dir)

    def board(self, **kw):
        kw.setdefault("clock", VirtualClock())
        return esp32_board.Board(data_dir=self.data_dir, **kw)


class TestProfile(_Base):
    def test_identity_and_settings(self):
        b = self.board()
        self.assertEqual(b.board_id, b"esp32s3")
        self.assertLessEqual(len(b.board_id), 12)
        s = b.settings
        for k in ("baud", "rx_size", "tx_size", "http_timeout_ms", "line_max", "uart_rxbuf"):
            self.assertIsInstance(s[k], int)
        self.assertEqual(s["baud"], 115200)
        self.assertIs(s["allow_raw"], False)
        self.assertLessEqual(s["rx_size"], 10240)  # AT+HTTPCGET rx size maximum
        b2 = self.board(settings={"rx_size": 4096})
        self.assertEqual(b2.settings["rx_size"], 4096)
        self.assertEqual(esp32_board.DEFAULT_SETTINGS["rx_size"], 2048)

    def test_uart_opened_with_profile_constants(self):
        b = self.board()
        self.assertEqual(len(self.chip.uarts), 1)
        u = self.chip.uarts[0]
        self.assertIs(b.uart, u)
        self.assertEqual(u.id, esp32_board.UART_ID)
        self.assertEqual(u.kw["baudrate"], 115200)
        self.assertEqual(u.kw["tx"], esp32_board.HOST_TX_PIN)
        self.assertEqual(u.kw["rx"], esp32_board.HOST_RX_PIN)
        self.assertEqual(u.kw["rxbuf"], b.settings["uart_rxbuf"])
        self.assertEqual(u.kw["timeout"], 0)  # readinto never blocks
        self.assertNotIn("flow", u.kw)  # flow control off unless pins are set
        self.assertIsNone(b.uart.readinto(bytearray(8)))  # nothing waiting: None

    def test_flow_control_when_pins_set(self):
        m = esp32_board
        old = (m.HOST_RTS_PIN, m.HOST_CTS_PIN)
        m.HOST_RTS_PIN, m.HOST_CTS_PIN = 15, 16
        try:
            self.board()
        finally:
            m.HOST_RTS_PIN, m.HOST_CTS_PIN = old
        u = self.chip.uarts[0]
        self.assertEqual((u.kw["rts"], u.kw["cts"]), (15, 16))
        self.assertEqual(u.kw["flow"], fake_esp32.UART.RTS | fake_esp32.UART.CTS)

    def test_injected_uart_is_used(self):
        from fakeuart import FakeUART

        u = FakeUART()
        b = self.board(uart=u)
        self.assertIs(b.uart, u)
        self.assertEqual(self.chip.uarts, [])

    def test_open_is_board(self):
        b = esp32_board.open(data_dir=self.data_dir, clock=VirtualClock())
        self.assertIsInstance(b, esp32_board.Board)

    def test_journal_and_boot_record_in_data_dir(self):
        b = self.board()
        for m in ("load", "save", "clear"):
            self.assertTrue(callable(getattr(b.journal, m)))
        b.journal.save({"stage": "report", "job": "J", "status": 3, "info": "x"})
        self.assertEqual(b.journal.load()["status"], 3)
        self.assertEqual(self.board().journal.load()["job"], "J")  # survives a power cycle
        b.journal.clear()
        self.assertIsNone(b.journal.load())
        self.assertEqual(b.state.path, self.data_dir + "/boot.json")
        j = esp32_board.JSONFile(self.data_dir + "/j.json")
        self.assertIs(self.board(journal=j).journal, j)

    def test_factory_state(self):
        b = self.board()
        self.assertEqual(b.running_slot(), 0)
        self.assertEqual(b.boot_state(), {"slot": 0, "trial": False, "rolled_back": False})
        self.assertEqual(b.running_version(), 0)
        self.assertEqual(self.board(factory_version=7).running_version(), 7)
        b.confirm()  # not on trial: no-op
        self.assertEqual(self.chip.boot_state, "undefined")

    def test_inactive_slot_is_next_update(self):
        b = self.board()
        s = b.inactive_slot()
        self.assertEqual((s.index, s.label), (1, "ota_1"))
        self.assertEqual(s.size, 8 * 4096)
        self.assertEqual(s.bdev.ioctl(4, 0), 8)
        self.assertEqual(s.bdev.ioctl(5, 0), 4096)
        # The extended protocol reaches ota_1 and nothing else.
        self.assertEqual(s.bdev.ioctl(6, 0), 0)
        s.bdev.writeblocks(0, b"\xe9\x01\x02", 100)
        self.assertEqual(self.chip.read("ota_1", 103)[100:], b"\xe9\x01\x02")
        self.assertEqual(self.chip.read("ota_0", 5000), self.factory)
        buf = bytearray(3)
        s.bdev.readblocks(0, buf, 100)
        self.assertEqual(bytes(buf), b"\xe9\x01\x02")

    def test_from_factory_partition(self):
        chip = Chip(slot_blocks=4, factory=True)
        fake_esp32.use(chip)
        b = self.board()
        self.assertEqual(b.running_slot(), -1)
        self.assertEqual(b.inactive_slot().label, "ota_0")
        self.assertEqual(b.inactive_slot().index, 0)


def _confirm_failing(fn):
    """``fn()`` while ``mark_app_valid_cancel_rollback()`` raises ``OSError(-1)``;
    returns what ``fn`` returns (the real call is put back whatever happens)."""

    def broken():
        raise OSError(-1)

    saved = fake_esp32.Partition.mark_app_valid_cancel_rollback
    fake_esp32.Partition.mark_app_valid_cancel_rollback = staticmethod(broken)
    try:
        return fn()
    finally:
        fake_esp32.Partition.mark_app_valid_cancel_rollback = saved


def _write_slot(slot, data):
    mv = memoryview(data)
    for blk in range((len(data) + 4095) // 4096):
        slot.bdev.ioctl(6, blk)
        slot.bdev.writeblocks(blk, mv[blk * 4096 : (blk + 1) * 4096], 0)


class TestCommitConfirm(_Base):
    def _commit(self, b, data, version):
        s = b.inactive_slot()
        _write_slot(s, data)
        b.commit(s.index, len(data), hashlib.sha256(data).digest(), version)
        return s

    def test_commit_reset_confirm(self):
        b = self.board()
        new = _app(9000, 2)
        self._commit(b, new, 5)
        self.assertEqual((self.chip.boot, self.chip.boot_state), ("ota_1", "new"))
        self.assertEqual(self.chip.running, "ota_0")  # nothing runs before the reset
        with self.assertRaises(ResetCalled):
            b.reboot()
        self.assertEqual(self.chip.resets, 1)
        with self.assertRaises(OSError):
            b.state.save({"x": 1})  # the boot record is closed by reboot()
        self.chip.power_on()
        b = self.board()
        self.assertEqual(b.boot_state(), {"slot": 1, "trial": True, "rolled_back": False})
        self.assertEqual(self.chip.boot_state, "pending_verify")
        self.assertEqual(b.running_version(), 0)  # not confirmed yet
        b.confirm()
        self.assertEqual(self.chip.boot_state, "valid")
        self.assertEqual(b.boot_state(), {"slot": 1, "trial": False, "rolled_back": False})
        self.assertEqual(b.running_version(), 5)
        self.chip.power_on()
        b = self.board()
        self.assertEqual(b.boot_state(), {"slot": 1, "trial": False, "rolled_back": False})
        self.assertEqual(b.running_version(), 5)
        self.assertEqual(b.inactive_slot().label, "ota_0")

    def test_unconfirmed_trial_rolls_back(self):
        b = self.board()
        self._commit(b, _app(9000, 3), 5)
        self.chip.power_on()  # trial boots...
        self.board()  # ... and resets before confirm()
        self.chip.power_on()
        self.assertEqual(self.chip.aborted, ["ota_1"])
        b = self.board()
        self.assertEqual(b.boot_state(), {"slot": 0, "trial": False, "rolled_back": True})
        self.assertEqual(b.running_version(), 0)
        self.assertTrue(self.board().boot_state()["rolled_back"])  # kept until next commit
        self._commit(b, _app(9000, 4), 6)
        self.assertFalse(b.boot_state()["rolled_back"])

    def test_commit_refuses_running_and_wrong_slot(self):
        b = self.board()
        d = hashlib.sha256(b"x").digest()
        with self.assertRaises(ValueError):
            b.commit(0, 100, d, 3)
        with self.assertRaises(ValueError):
            b.commit(5, 100, d, 3)
        with self.assertRaises(ValueError):
            b.commit(1, 100, d[:31], 3)
        with self.assertRaises(ValueError):
            b.commit(1, 10**9, d, 3)
        self.assertEqual(self.chip.set_boots, 0)
        self.assertIsNone(b.state.load())

    def test_invalid_image_refused_by_set_boot(self):
        b = self.board()
        s = b.inactive_slot()
        _write_slot(s, b"\x00not an app image")
        # (ValueError: the agent's 5, the image is refused; an OSError is a failure
        # to retry, like a full filesystem)
        with self.assertRaises(ValueError) as cm:
            b.commit(1, 17, hashlib.sha256(b"").digest(), 3)
        self.assertIn(str(fake_esp32.ERR_VALIDATE_FAILED), str(cm.exception))
        self.assertEqual(self.chip.boot, "ota_0")
        st = b.state.load() or {}
        self.assertNotIn("pending", st)  # the record was undone
        self.chip.power_on()
        self.assertEqual(
            self.board().boot_state(), {"slot": 0, "trial": False, "rolled_back": False}
        )

    def test_firmware_without_rollback(self):
        chip = Chip(slot_blocks=8, rollback=False)
        chip.flash("ota_0", self.factory)
        fake_esp32.use(chip)
        b = self.board()
        self._commit(b, _app(6000, 5), 9)
        chip.power_on()
        b = self.board()
        self.assertTrue(b.boot_state()["trial"])
        b.confirm()  # OSError(-261) from the firmware: nothing to cancel
        self.assertFalse(b.rollback_supported)
        self.assertEqual(b.running_version(), 9)
        self.assertFalse(b.boot_state()["trial"])

    def test_confirm_failure_keeps_trial(self):
        chip = Chip(slot_blocks=8)
        chip.flash("ota_0", self.factory)
        fake_esp32.use(chip)
        b = self.board()
        self._commit(b, _app(6000, 6), 9)
        chip.power_on()
        b = self.board()
        with self.assertRaises(OSError):
            _confirm_failing(b.confirm)
        self.assertTrue(b.boot_state()["trial"])  # still on trial: not recorded as good


class TestJSONFile(unittest.TestCase):
    def setUp(self):
        self.path = _tmp("json")
        self.j = esp32_board.JSONFile(self.path)

    def tearDown(self):
        _rm(self.path)

    def test_round_trip_replace_clear(self):
        self.assertIsNone(self.j.load())
        self.j.save({"a": 1, "b": [1, "x", None, True], "c": {"d": "e"}})
        self.assertEqual(self.j.load()["b"], [1, "x", None, True])
        self.j.save({"a": 2})
        self.assertEqual(self.j.load(), {"a": 2})
        self.j.clear()
        self.assertIsNone(self.j.load())
        self.j.clear()  # twice is fine

    def test_rejects_non_json_types(self):
        self.j.save({"a": 1})
        with self.assertRaises(TypeError):
            self.j.save({"a": b"bytes"})
        with self.assertRaises(TypeError):
            self.j.save({1: "int key"})
        with self.assertRaises(TypeError):
            self.j.save(["not", "a", "dict"])
        self.assertEqual(self.j.load(), {"a": 1})

    def test_corrupt_or_partial_is_none(self):
        for raw in (b'{"a": 1', b"", b"[1, 2]", b"\xff\xfe"):
            with open(self.path, "wb") as f:
                f.write(raw)
            self.assertIsNone(self.j.load())

    def test_tmp_used_only_when_main_missing(self):
        with open(self.path + ".tmp", "w") as f:
            f.write('{"from": "tmp"}')
        self.assertEqual(self.j.load(), {"from": "tmp"})  # a cut between remove and rename
        self.j.save({"from": "main"})
        with open(self.path + ".tmp", "w") as f:
            f.write('{"from": "stale')  # a cut while writing the next record
        self.assertEqual(self.j.load(), {"from": "main"})


class TestAgentEndToEnd(_Base):
    """The real agent, the esp32 profile, fake chip, TinyESP."""

    def _run_boot(self, esp):
        b = self.board()
        return b, for_board(b, log=Logger("t", sink=self.log_lines.append))

    def _image(self, version):
        payload = _app(11000, 7)  # three erase blocks, the last one partial
        return payload, build_header(payload, b"esp32s3", version) + payload

    def test_update_commit_reset_confirm_report_2(self):
        payload, image = self._image(2)
        esp = TinyESP(image)
        self.chip.on_uart = esp.attach
        b, agent = self._run_boot(esp)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual(self.chip.resets, 1, log)
        self.assertEqual([r[1] for r in esp.results], [1], log)  # in progress only
        self.assertEqual((self.chip.boot, self.chip.boot_state), ("ota_1", "new"))
        self.assertEqual(self.chip.read("ota_1", len(payload)), payload)
        self.assertEqual(self.chip.read("ota_0", len(self.factory)), self.factory)

        self.chip.power_on()  # the bootloader starts the new image on trial
        b, agent = self._run_boot(esp)
        self.assertTrue(b.boot_state()["trial"])
        agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual(esp.results[-1][:2], ("J1", 2), log)
        self.assertFalse(esp.pending)
        self.assertEqual(self.chip.boot_state, "valid")
        self.assertEqual(b.boot_state(), {"slot": 1, "trial": False, "rolled_back": False})
        self.assertEqual(b.running_version(), 2)
        self.assertIsNone(b.journal.load())  # result delivered: journal cleared
        self.assertEqual(agent.errors, 0, log)

        self.chip.power_on()  # confirmed: stays on the new image
        self.assertEqual(self.chip.running, "ota_1")
        self.assertEqual(self.board().running_version(), 2)

    def test_commit_refused_by_the_bootloader_reports_5_once(self):
        # An image that is not an ESP32 app (no 0xE9 magic: e.g. firmware.bin with the
        # bootloader in front) passes our digest but set_boot() refuses it. The agent
        # reports 5 once and stops; it must not retry the commit forever.
        payload = b"\x00" + _app(5000, 9)[1:]
        esp = TinyESP(build_header(payload, b"esp32s3", 2) + payload)
        self.chip.on_uart = esp.attach
        b, agent = self._run_boot(esp)
        agent.run(until_idle=True, timeout_ms=200000)
        log = "\n".join(self.log_lines)
        self.assertEqual([r[1] for r in esp.results], [1, 5], log)
        self.assertIn("slot refused image", esp.results[-1][2])
        self.assertEqual(self.chip.resets, 0)
        self.assertEqual(self.chip.running, "ota_0")
        self.assertIsNone(b.journal.load())

    def test_trial_reset_before_confirm_reports_3(self):
        payload, image = self._image(2)
        esp = TinyESP(image)
        self.chip.on_uart = esp.attach
        b, agent = self._run_boot(esp)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        self.chip.power_on()  # the trial boots, then dies before the agent confirms
        self.chip.power_on()  # the bootloader abandons it
        self.assertEqual(self.chip.running, "ota_0")
        b, agent = self._run_boot(esp)
        self.assertEqual(b.boot_state(), {"slot": 0, "trial": False, "rolled_back": True})
        # Status 3 leaves the job pending: the agent fetches it again and retries, which
        # ends in the next commit and reset.
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual([r[1] for r in esp.results], [1, 3, 1], log)
        self.assertIn("rolled back", esp.results[1][2])
        self.assertEqual(b.running_version(), 0)
        self.assertEqual((self.chip.boot, self.chip.boot_state), ("ota_1", "new"))

    def test_wrong_board_image_rejected_5(self):
        payload = _app(3000, 8)
        image = build_header(payload, b"unix", 2) + payload
        esp = TinyESP(image)
        self.chip.on_uart = esp.attach
        b, agent = self._run_boot(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(esp.results[-1][1], 5, "\n".join(self.log_lines))
        self.assertEqual(self.chip.set_boots, 0)
        self.assertEqual(self.chip.resets, 0)


class TestBadBootRecords(_Base):
    """Damaged or odd boot records, a partition table with one OTA slot, a full
    filesystem, power cuts inside commit(): found by an adversarial run."""

    def _write(self, text):
        with open(self.data_dir + "/boot.json", "wb") as f:
            f.write(text)

    def test_a_boot_record_that_parses_wrong_never_stops_the_board(self):
        # Damage (or another version's record) cannot tell whether the running image
        # is on trial: it is taken as on trial (confirming a valid image is harmless;
        # one left unconfirmed lets the next download write the fallback slot).
        b0 = self.board()
        for text in (
            b'{"pending": "ota_1"}',
            b'{"pending": 1}',
            b'{"pending": {"slot": "ota_0"}}',
            b'{"pending": {"slot": ["ota_0"], "version": 2, "sha256": "00"}}',
            b"{not json",
            b"[1, 2]" + b" " * 20000,  # longer than any record
        ):
            self._write(text)
            b = self.board()
            self.assertEqual(b.boot_state()["trial"], True, text)
            b.confirm()  # never raises for the damage; the running image is marked good
            self.assertEqual(b.boot_state(), {"slot": 0, "trial": False, "rolled_back": False})
            self.assertEqual(b.running_version(), 0)
        for text in (b'{"versions": {"ota_0": "5"}}', b'{"versions": [1, 2]}', b""):
            self._write(text)
            self.assertEqual(self.board().running_version(), 0, text)
        self.assertIsNone(b0.running_sha256())

    def test_a_version_no_header_carries_is_damage_and_commits_still_work(self):
        # {"ota_0": 2.5}: every commit() raised TypeError (the record kept a float it
        # refused to write back), so each notification downloaded the whole image and
        # reported 3; {"ota_0": 2**40}: every good image was refused 5 as a downgrade.
        # Neither is a header's u32: the factory version runs, and commits go through.
        self.board()  # (makes the data directory)
        for v in (b"2.5", b"1099511627776", b"-1", b"true"):
            self._write(b'{"versions": {"ota_0": ' + v + b'}, "seq": 2.5}')
            b = self.board()
            self.assertEqual(b.running_version(), 0, v)
            s = b.inactive_slot()
            data = _app(6000, 3)
            _write_slot(s, data)
            b.commit(s.index, len(data), hashlib.sha256(data).digest(), 3)
            self.assertEqual(b.boot_state()["slot"], 0, v)  # (set on trial, not booted yet)

    def test_one_ota_slot_is_never_handed_out_while_it_runs(self):
        # factory + ota_0: once ota_0 runs, ESP-IDF's next update partition is ota_0
        # itself. inactive_slot() refuses it; from factory it is ota_0.
        chip = Chip(slot_blocks=8, factory=True)
        chip.entries = [e for e in chip.entries if e.label != "ota_1"]
        fake_esp32.use(chip)
        self.assertEqual(self.board().inactive_slot().label, "ota_0")
        chip.running = chip.boot = "ota_0"
        with self.assertRaises(OSError):
            self.board().inactive_slot()

    def test_a_power_cut_before_set_boot_returned_is_no_rollback(self):
        # commit() records the commit, then set_boot(): the power went in between.
        b = self.board()
        s = b.inactive_slot()
        data = _app(6000, 3)
        _write_slot(s, data)
        real = fake_esp32.Partition.set_boot

        class Cut(Exception):
            pass

        def cut(part):
            raise Cut()

        fake_esp32.Partition.set_boot = cut
        try:
            with self.assertRaises(Cut):
                b.commit(1, len(data), hashlib.sha256(data).digest(), 4)
        finally:
            fake_esp32.Partition.set_boot = real
        self.chip.power_on()
        self.assertEqual(
            self.board().boot_state(), {"slot": 0, "trial": False, "rolled_back": False}
        )

    def test_a_full_filesystem_at_commit_is_an_oserror_not_a_refusal(self):
        b = self.board()
        s = b.inactive_slot()
        data = _app(6000, 3)
        _write_slot(s, data)

        def full(d):
            raise OSError(28)

        b.state.save = full
        with self.assertRaises(OSError):
            b.commit(1, len(data), hashlib.sha256(data).digest(), 4)
        self.assertEqual(self.chip.set_boots, 0)
        self.assertEqual(b.commit_seq(), 0)  # nothing changed, in RAM either
        del b.state.save
        b.commit(1, len(data), hashlib.sha256(data).digest(), 4)
        self.assertEqual((b.commit_seq(), self.chip.set_boots), (1, 1))

    def test_the_confirmed_image_digest_is_recorded(self):
        b = self.board()
        data = _app(6000, 3)
        s = b.inactive_slot()
        _write_slot(s, data)
        b.commit(1, len(data), hashlib.sha256(data).digest(), 4)
        self.chip.power_on()
        b = self.board()
        self.assertIsNone(b.running_sha256())  # not confirmed yet
        b.confirm()
        self.assertEqual(b.running_sha256(), hashlib.sha256(data).digest())
        self.assertEqual(self.board().running_sha256(), hashlib.sha256(data).digest())


class TestAgentBadBoot(_Base):
    """The agent on the esp32 profile when the boot record, the journal or the
    partition table is not what a normal update leaves."""

    def _agent(self, esp):
        self.chip.on_uart = esp.attach
        b = self.board()
        return b, for_board(b, log=Logger("t", sink=self.log_lines.append))

    def _image(self, version, seed=7):
        payload = _app(11000, seed)
        return payload, build_header(payload, b"esp32s3", version) + payload

    def _update(self, esp):
        b, agent = self._agent(esp)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        self.chip.power_on()

    def test_a_trial_with_no_usable_commit_record_is_confirmed_before_any_download(self):
        # The journal's commit record is lost (damaged, another version's): the board
        # still says trial. Left so, the next job wrote the slot the bootloader falls
        # back to, and a power cut in it left nothing to boot.
        for how in ("journal", "boot record"):
            self.chip = Chip(slot_blocks=8)
            fake_esp32.use(self.chip)
            self.chip.flash("ota_0", self.factory)
            self.data_dir = _tmp("dir")
            payload, image = self._image(2)
            esp = TinyESP(image)
            self._update(esp)
            b = self.board()
            if how == "journal":
                b.journal.save({"stage": "committed", "job": "J1", "slot": "x"})
            else:
                with open(self.data_dir + "/boot.json", "wb") as f:
                    f.write(b"\x00garbage")
            p3, img3 = self._image(3, seed=11)
            esp.image, esp.job, esp.pending = img3, "J2", True
            b, agent = self._agent(esp)
            self.assertTrue(b.boot_state()["trial"], how)
            with self.assertRaises(ResetCalled):
                agent.run(until_idle=True, timeout_ms=120000)
            log = "\n".join(self.log_lines)
            self.assertIn("on trial with no commit record: confirming", log)
            self.assertEqual(self.chip.boot_state, "new", how)  # v3 committed after...
            self.assertEqual(self.chip.aborted, [], how)
            self.assertEqual(self.chip.read("ota_1", len(payload)), payload, how)  # ...v2 ran
            self.assertEqual(self.chip.read("ota_0", len(p3)), p3, how)

    def test_a_trial_that_cannot_be_confirmed_gets_no_download(self):
        # confirm() raises every time: no download (the inactive slot is the way back),
        # the job is told 3, and the cycles do not come back twice a second for ever
        # (they did: 215 errors and as many ESP re-initialisations in two minutes,
        # with no fetch and no result).
        payload, image = self._image(2)
        esp = TinyESP(image)
        self._update(esp)
        b = self.board()
        b.journal.clear()
        esp.image, esp.job, esp.pending = self._image(3, seed=11)[1], "J2", True
        gets = b"".join(esp.commands).count(b"AT+HTTPCGET")
        n0 = len(esp.commands)
        b, agent = self._agent(esp)
        _confirm_failing(lambda: agent.run(timeout_ms=120000))
        log = "\n".join(self.log_lines)
        self.assertGreater(agent.errors, 0)
        self.assertEqual(self.chip.read("ota_0", len(self.factory)), self.factory)
        self.assertEqual(b"".join(esp.commands).count(b"AT+HTTPCGET"), gets)
        self.assertEqual(self.chip.boot_state, "pending_verify")  # v2 still on trial
        self.assertEqual(esp.results[-1], ("J2", 3, "running image not confirmed"), log)
        self.assertLessEqual(esp.commands[n0:].count(b"ATE0"), 10, log)

    def test_with_one_ota_slot_running_it_a_job_is_refused_and_nothing_written(self):
        chip = self.chip = Chip(slot_blocks=8, factory=True)
        chip.entries = [e for e in chip.entries if e.label != "ota_1"]
        fake_esp32.use(chip)
        chip.flash("factory", self.factory)
        payload, image = self._image(2)
        esp = TinyESP(image)
        self._update(esp)  # factory -> ota_0
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(esp.results[-1][1], 2)
        p3, img3 = self._image(3, seed=11)
        esp.image, esp.job, esp.pending = img3, "J2", True
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual(esp.results[-1][:2], ("J2", 5), log)
        self.assertIn("no inactive slot", esp.results[-1][2])
        self.assertEqual(chip.read("ota_0", len(payload)), payload)  # the running image
        self.assertEqual(chip.running, "ota_0")

    def test_a_commit_failure_that_says_nothing_still_says_what_failed(self):
        # set_boot() raising OSError() (no errno, no text) or MemoryError(): the result
        # was "commit failed: " with nothing after it.
        for exc in (OSError(), MemoryError()):
            payload, image = self._image(2)
            esp = TinyESP(image)
            b, agent = self._agent(esp)

            def fail(part, exc=exc):
                raise exc

            real = fake_esp32.Partition.set_boot
            fake_esp32.Partition.set_boot = fail
            try:
                agent.run(until_idle=True, timeout_ms=120000)
            finally:
                fake_esp32.Partition.set_boot = real
            # (the second pass finds the first's kept commit record: 3, then again)
            self.assertEqual(esp.results[-1][1:], (3, "commit failed: " + type(exc).__name__))

    def test_a_full_filesystem_at_commit_reports_3_and_commits_from_the_slot_later(self):
        payload, image = self._image(2)
        esp = TinyESP(image)
        b, agent = self._agent(esp)
        real = b.state.save
        calls = []

        def full(d):
            if d.get("pending"):
                calls.append(1)
                raise OSError(28)
            real(d)

        b.state.save = full
        agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual([r[1] for r in esp.results], [1, 3], log)
        self.assertIn("commit failed", esp.results[-1][2])
        self.assertEqual(self.chip.set_boots, 0)
        # Room again (and a power cycle): the next cycle commits what the slot holds,
        # checked against the journal's SHA-256, without a download.
        gets = b"".join(esp.commands).count(b"AT+HTTPCGET")
        b, agent = self._agent(esp)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(self.chip.set_boots, 1)
        self.assertIn("committing again", "\n".join(self.log_lines))
        self.assertEqual(b"".join(esp.commands).count(b"AT+HTTPCGET"), gets)
        self.chip.power_on()
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(esp.results[-1][1], 2)
        self.assertEqual(b.running_sha256(), hashlib.sha256(payload).digest())

    def test_an_image_that_never_confirms_is_refused_after_three_rollbacks(self):
        # It was downloaded and committed again on every notification, for ever (two
        # resets each time). A rollback may be a power cut in the trial boot: 3 twice,
        # then 5, and the job is finished.
        payload, image = self._image(2)
        esp = TinyESP(image)
        for _ in range(3):
            b, agent = self._agent(esp)
            with self.assertRaises(ResetCalled):
                agent.run(until_idle=True, timeout_ms=120000)
            self.chip.power_on()  # the trial boots and dies before it is confirmed
            self.chip.power_on()  # the bootloader abandons it
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual([r[1] for r in esp.results], [1, 3, 1, 3, 1, 5], log)
        self.assertEqual(esp.results[-1][2], "v2 rolled back 3 times")
        self.assertFalse(esp.pending)
        self.assertEqual(self.chip.aborted, ["ota_1"] * 3)
        self.assertEqual(self.chip.set_boots, 3)
        self.assertEqual(self.chip.running, "ota_0")
        self.assertIsNone(b.journal.load())
        # another image for the same job starts the count again
        esp.pending = True
        p3, esp.image = self._image(2, seed=12)
        b, agent = self._agent(esp)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(self.chip.set_boots, 4)

    def test_a_power_cut_before_the_commit_after_a_rollback_commits_again(self):
        # The power went between the journal's commit record and commit(), while the
        # boot record still said "rolled back" from the trial before. That used to be
        # taken for a rollback of this commit: 3, and the whole image again. The
        # commit count has not moved: the verified image is committed from the slot.
        class PowerCut(BaseException):
            pass

        payload, image = self._image(2)
        esp = TinyESP(image)
        self._update(esp)
        self.chip.power_on()  # the trial dies: rolled back
        b, agent = self._agent(esp)

        def cut(*a):
            raise PowerCut()

        b.commit = cut
        with self.assertRaises(PowerCut):
            agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual([r[1] for r in esp.results], [1, 3, 1])
        gets = b"".join(esp.commands).count(b"AT+HTTPCGET")
        self.chip.power_on()
        b, agent = self._agent(esp)
        self.assertTrue(b.boot_state()["rolled_back"])  # (the earlier trial's)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertIn("committing again", log)
        self.assertEqual([r[1] for r in esp.results], [1, 3, 1], log)
        self.assertEqual(b"".join(esp.commands).count(b"AT+HTTPCGET"), gets)
        self.chip.power_on()
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(esp.results[-1][1], 2)

    def test_the_rollback_count_survives_a_failed_download_and_a_failed_commit(self):
        # Between rollbacks of the same image: a download that fails every attempt
        # (no header kept) cleared the journal and the count with it, so the loop never
        # ended; a commit that failed (set_boot's OSError) after an earlier rollback
        # was taken for a rollback of its own (the old flag), and downloaded again.
        payload, image = self._image(2)
        esp = TinyESP(image)
        self._update(esp)
        self.chip.power_on()  # rollback 1
        esp.fail_gets = 100
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=600000)
        self.assertEqual([r[1] for r in esp.results], [1, 3, 1, 3])
        self.assertNotIn("rolled back", esp.results[-1][2])
        self.assertEqual(b.journal.load()["rb"][1], 1)
        esp.fail_gets = 0
        b, agent = self._agent(esp)
        real = fake_esp32.Partition.set_boot
        fake_esp32.Partition.set_boot = lambda part: (_ for _ in ()).throw(OSError(-1))
        try:
            agent.run(until_idle=True, timeout_ms=600000)
        finally:
            fake_esp32.Partition.set_boot = real
        self.assertIn("commit failed", esp.results[-1][2])
        gets = b"".join(esp.commands).count(b"AT+HTTPCGET")
        self.chip.power_on()
        b, agent = self._agent(esp)
        with self.assertRaises(ResetCalled):  # committed from the slot, no download
            agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(b"".join(esp.commands).count(b"AT+HTTPCGET"), gets)
        self.chip.power_on()
        self.chip.power_on()  # rollback 2
        b, agent = self._agent(esp)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=120000)
        self.chip.power_on()
        self.chip.power_on()  # rollback 3
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual(esp.results[-1][1:], (5, "v2 rolled back 3 times"), log)
        self.assertEqual(self.chip.aborted, ["ota_1"] * 3)

    def test_the_rollback_count_survives_a_power_cut_after_a_digest_failure(self):
        # A SHA-256 mismatch starts the download over and cleared the journal: a power
        # cut before the next download's record lost the job's rollback count.
        class PowerCut(BaseException):
            pass

        payload, image = self._image(2)
        esp = TinyESP(image)
        self._update(esp)
        self.chip.power_on()  # rollback 1
        bad = bytearray(image)
        bad[-100] ^= 1
        esp.image = bytes(bad)
        b, agent = self._agent(esp)
        real = agent._journal_download
        calls = []

        def cut(note, raw):
            calls.append(1)
            if len(calls) == 2:
                raise PowerCut()
            return real(note, raw)

        agent._journal_download = cut
        with self.assertRaises(PowerCut):
            agent.run(until_idle=True, timeout_ms=120000)
        self.assertIn("SHA-256 mismatch", "\n".join(self.log_lines))
        d = b.journal.load()
        sha = "".join("%02x" % c for c in hashlib.sha256(payload).digest())
        self.assertEqual(d, {"stage": "rolled_back", "job": "J1", "rb": [sha, 1]})

    def test_another_jobs_result_keeps_a_pending_jobs_rollback_count(self):
        # J1's image rolled back twice (the journal's record of it); job JB, refused
        # before any download, ended with a result that cleared the journal, and J1's
        # next rollback counted from 1 again.
        b = self.board()
        d = {"stage": "rolled_back", "job": "J1", "rb": ["ab" * 32, 2]}
        b.journal.save(d)
        p_b = _app(3000, 8)
        esp = TinyESP(build_header(p_b, b"unix", 3) + p_b, job="JB")
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(esp.results[-1][:2], ("JB", 5))
        self.assertEqual(b.journal.load(), d)

    def test_a_confirm_that_fails_after_a_commit_is_3_and_the_cycle_goes_on(self):
        # The commit record is there and the trial image runs, but confirm() raises
        # every time: every cycle ended on it (no fetch, no ESP restart, no result).
        payload, image = self._image(2)
        esp = TinyESP(image)
        self._update(esp)
        b, agent = self._agent(esp)
        _confirm_failing(lambda: agent.run(timeout_ms=600000))
        log = "\n".join(self.log_lines)
        self.assertIn(("J1", 3, "confirm failed"), esp.results, log)
        self.assertEqual([r[1] for r in esp.results].count(3), 1, log)  # once per boot
        self.assertIn(b"AT+RMOTAFETCH", esp.commands[-40:], log)
        self.assertEqual(b.journal.load()["stage"], "committed")  # kept for the confirm
        self.assertLessEqual(agent.errors, 20, log)
        b, agent = self._agent(esp)  # confirm works again
        agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(esp.results[-1][:2], ("J1", 2))
        self.assertEqual(self.chip.boot_state, "valid")

    def test_the_rollback_count_behind_another_jobs_undelivered_result_is_read(self):
        # The journal holds J2's result (the ESP refuses it) with J1's count kept
        # behind it: J1's next download started counting from 1 again.
        payload, image = self._image(2)
        sha = "".join("%02x" % c for c in hashlib.sha256(payload).digest())
        b = self.board()
        keep = {"stage": "rolled_back", "job": "J1", "rb": [sha, 2]}
        b.journal.save(
            {"stage": "report", "job": "J2", "status": 3, "info": "x", "download": keep}
        )
        esp = TinyESP(image)
        esp.refuse = ("J2",)
        b, agent = self._agent(esp)
        with self.assertRaises(ResetCalled):
            agent.run(until_idle=True, timeout_ms=600000)
        self.chip.power_on()
        self.chip.power_on()  # the third rollback of J1's image
        esp.refuse = ()
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=600000)
        log = "\n".join(self.log_lines)
        self.assertEqual(esp.results[-1], ("J1", 5, "v2 rolled back 3 times"), log)

    def test_the_installed_job_announced_again_is_2(self):
        # The ESP rebooted before result 2 reached the cloud: the job is announced
        # again with the image that runs. Its version and SHA-256 match: 2, not 5.
        payload, image = self._image(2)
        esp = TinyESP(image)
        self._update(esp)
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        self.assertEqual(esp.results[-1][1], 2)
        esp.pending = True  # announced again
        b, agent = self._agent(esp)
        agent.run(until_idle=True, timeout_ms=120000)
        log = "\n".join(self.log_lines)
        self.assertEqual(esp.results[-1][1], 2, log)
        self.assertEqual(self.chip.set_boots, 1)


if __name__ == "__main__":
    unittest.main()
