"""Bad input an adversarial tester found, as regressions (both runtimes): unusable
journal records, a stalled download kept alive by URCs, a finished job announced
again, a response longer than the image, a log sink that fails, hostile response lines.
The agent runs in-process on virtual time against host_tests/dual/scriptesp.py."""

import unittest

from fakeuart import FakeUART
from rmota.agent import for_board
from rmota.at import ATLink
from rmota.compat import VirtualClock
from rmota.log import Logger
from scriptesp import FLASH, ESP, SHORT, fresh_flash, mkimage, payload, run

import board as unix_board


def _statuses(res):
    return [int(r.split(b",")[2]) for r in res["esp"].results]


class TestJournalRecords(unittest.TestCase):
    CASES = (
        {"stage": "report", "job": "JOB1"},
        {"stage": "report", "job": "JOB1", "status": "2", "info": 5},
        {"stage": "report", "job": 7, "status": 3, "info": "x"},
        {"stage": "committed", "job": "JOB1"},
        {"stage": "committed", "job": "JOB1", "slot": 0, "version": "x", "len": 100},
        {"stage": "committed", "job": "JOB1", "slot": 1, "version": 2, "len": "100"},
        {"stage": "download", "job": "JOB1", "url": 5, "size": 20064, "slot": 1, "hdr": "zz"},
        {"stage": [1], "job": "JOB1"},
    )

    def test_an_unusable_record_is_dropped_and_the_job_still_runs(self):
        img = mkimage(payload(20000))
        for d in self.CASES:

            def pre(boot, d=d):
                if boot == 1:
                    b = unix_board.Board(FLASH, clock=VirtualClock())
                    b.journal.save(d)
                    b.close()

            r = run(img, pre_boot=pre, max_ms=120000)
            self.assertIsNone(r["exc"], d)
            self.assertEqual(_statuses(r)[-1], 2, (d, r["esp"].results))
            self.assertEqual(r["boot"]["slot"], 1, d)


class TestBoundedWaits(unittest.TestCase):
    def test_urcs_do_not_keep_a_stalled_download_alive(self):
        img = mkimage(payload(40000))

        def setup(esp):
            esp.hung = False
            esp.last = 0

            def cget(esp, start, data):
                esp.hung = True
                return esp.records(data[:4096], 2048)  # then nothing, no final result

            esp.cget_hook = cget

        def tick(now, esp, agent):
            if esp.hung and now - esp.last >= 1000:
                esp.last = now
                esp.out(b"+RMRECV:Cloud,Light,Power:true\r\n")

        r = run(img, setup=setup, tick=tick, max_ms=600000)
        self.assertEqual(r["end"], "idle")
        self.assertEqual(_statuses(r)[-1], 3)
        self.assertLess(r["vms"], 120000)


class TestReannounced(unittest.TestCase):
    def test_the_installed_job_announced_again_is_2_not_5(self):
        img = mkimage(payload(20000))

        def setup(esp):
            esp.lost = False

            def res(esp, line):
                esp.out(b"\r\nOK\r\n")
                if b",2," in line and not esp.lost:
                    esp.lost = True  # the ESP rebooted before the cloud heard it
                    esp.out(b"\r\nready\r\n")
                elif b",5," in line or b",2," in line:
                    esp.notify = None

            esp.result_hook = res

        r = run(img, setup=setup, max_ms=600000)
        self.assertNotIn(5, _statuses(r))
        self.assertEqual(_statuses(r)[-1], 2)


class TestLongerResponse(unittest.TestCase):
    def test_extra_bytes_in_the_last_record_or_after_it_are_the_same_failure(self):
        img = mkimage(payload(20000))
        for split in (True, False):

            def setup(esp, split=split):
                def cget(esp, start, data):
                    extra = b"EXTRA BYTES"
                    if split:
                        body = esp.records(data, 4096) + esp.records(extra, 4096)
                    else:
                        body = esp.records(data + extra, 4096)
                    return body + b"\r\nOK\r\n"

                esp.cget_hook = cget

            r = run(img, setup=setup, max_ms=120000)
            self.assertEqual(_statuses(r)[-1], 3, split)
            self.assertIn(b"longer than announced", r["esp"].results[-1])
            self.assertEqual(r["boot"]["slot"], 0)


class TestNeverRaises(unittest.TestCase):
    def test_a_failing_log_sink_does_not_escape_poll(self):
        fresh_flash(FLASH)
        clock = VirtualClock()
        b = unix_board.Board(FLASH, clock=clock, settings=SHORT)
        uart = FakeUART()
        esp = ESP(uart, mkimage(payload(3000)))
        esp.cmd_hook = lambda esp, line: True  # the ESP answers nothing

        def full_disk(line):
            raise OSError(28, "ENOSPC")

        agent = for_board(b, uart=uart, clock=clock, log=Logger("rmota", sink=full_disk))
        for _ in range(20000):
            if not agent.poll():
                clock.sleep_ms(5)
        self.assertGreater(agent.link_failures, 0)  # it went round, warning each time
        self.assertGreater(agent.log.failures, 0)
        b.close()

    def test_hostile_response_lines_are_capped(self):
        u = FakeUART()
        link = ATLink(u, clock=VirtualClock(), line_max=256, record_max=256)
        # (lines of a command's own prefix; during AT+HTTPCGET a "+HTTPCGET:1" line is
        # a damaged record header, not a response line)
        c = link.send(b'AT+HTTPGETSIZE=""', 1 << 29)
        u.feed(b"+HTTPGETSIZE:1\n" * 500)
        for _ in range(50):
            link.poll()
        self.assertEqual(len(c.lines), 8)
        self.assertEqual(link.dropped_lines, 492)

    def test_a_subscriber_that_raises_does_not_stop_the_link(self):
        u = FakeUART()
        link = ATLink(u, clock=VirtualClock())
        got = []

        def bad(kind, line):
            raise ValueError("application bug")

        link.subscribe(bad)
        link.subscribe(lambda k, line: got.append(line))
        u.feed(b"+RMRECV:a,b,c:1\r\n+RMCONNECTED\r\n")
        link.poll()
        self.assertEqual(got, [b"+RMRECV:a,b,c:1", b"+RMCONNECTED"])
        self.assertEqual(link.subscriber_errors, 2)


class TestSilentESP(unittest.TestCase):
    def test_an_esp_silent_for_a_minute_is_a_link_failure_not_an_agent_error(self):
        # The ESP answers nothing for the first 60 s (busy, held in reset): AT goes
        # unanswered through _init_esp's back-off and the cycle ends on LinkError. That
        # is a state of the ESP, not a defect: a warning, a back-off that doubles (50,
        # 100, 200 ms, then backoff_max_ms), and once the ESP answers the update ends in
        # 2. It used to be an agent error, counted like a MemoryError (firmware/main.py
        # gives up after 20 of those).
        img = mkimage(payload(20000))

        def tick(now, esp, agent):
            esp.now = now

        def setup(esp):
            esp.now = 0
            esp.cmd_hook = lambda esp, line: esp.now < 60000

        r = run(img, setup=setup, tick=tick)
        self.assertIsNone(r["exc"])
        self.assertEqual(_statuses(r)[-1], 2, r["esp"].results)
        self.assertEqual(r["boot"]["slot"], 1)
        lines = r["log"].lines  # (every boot's agent: the last one came after the commit)
        self.assertEqual([x for x in lines if "agent error" in x], [])
        down = [x for x in lines if "link down (ESP does not answer AT)" in x]
        waits = [x.split("next cycle in ")[1] for x in down]
        self.assertGreaterEqual(len(waits), 4)
        self.assertEqual(waits[:4], ["50 ms", "100 ms", "200 ms", "200 ms"])
        self.assertEqual(set(waits[3:]), {"200 ms"})


class TestConfirmBeforeTwo(unittest.TestCase):
    def test_the_boot_record_is_confirmed_when_2_reaches_the_esp(self):
        # Status 2 only after the new image booted and was confirmed (DESIGN.md section
        # 2): look at the boot record at the instant the ESP receives the result.
        img = mkimage(payload(12000))
        seen = []

        def setup(esp):
            def res(esp, line):
                if b",2," in line:
                    b = unix_board.Board(FLASH, boot=False)
                    st = (b.loader.record.active, b.loader.record.state)
                    b.close()
                    seen.append(st)
                    esp.notify = None
                esp.out(b"\r\nOK\r\n")

            esp.result_hook = res

        r = run(img, setup=setup, max_ms=120000)
        self.assertEqual(_statuses(r), [1, 2])
        self.assertEqual(seen, [(1, 1)])  # slot 1, state 1 = confirmed


class TestRunGivesUp(unittest.TestCase):
    def test_run_returns_after_max_errors(self):
        # An error that comes back every cycle (too little heap): run() must not loop
        # forever when the caller bounded it (firmware/main.py exits 1 then).
        fresh_flash(FLASH)
        b = unix_board.Board(FLASH, clock=VirtualClock(), settings={"backoff_ms": 100})
        try:
            a = for_board(b, uart=FakeUART(), clock=b.clock)

            def broken():
                raise MemoryError("memory allocation failed")
                yield

            a._main = broken
            a.run(until_idle=True, max_errors=3)
            self.assertEqual(a.errors, 3)
            self.assertIn("MemoryError", a.last_error)
        finally:
            b.close()


class TestSettingsCheckedAtConstruction(unittest.TestCase):
    def test_bad_erase_unit_or_prog_chunk_is_refused_before_any_job(self):
        for st in ({"erase_unit": 5000}, {"erase_unit": -4096}, {"prog_chunk": 100}):
            fresh_flash(FLASH)
            b = unix_board.Board(FLASH, clock=VirtualClock(), settings=st)
            try:
                with self.assertRaises(ValueError):
                    for_board(b, uart=FakeUART(), clock=b.clock)
            finally:
                b.close()
