"""Bad input adversarial testers found, as regressions (both runtimes): unusable
journal records, a stalled download kept alive by URCs, a finished job announced
again, a response longer than the image, a log sink that fails, hostile response lines,
a commit record that names an image that does not run, a notification in a burst of
other lines or longer than a line may be, job ids too long for a result, a progress
callback that raises, <info> cut to size. The agent runs in-process on virtual time
against host_tests/dual/scriptesp.py."""

import unittest

from fakeuart import FakeUART
from rmota.agent import clip_info, for_board, info_room
from rmota.at import ATLink
from rmota.compat import VirtualClock
from rmota.log import Logger
import hashlib
from binascii import hexlify

from scriptesp import FLASH, ESP, SHORT, URL, Logsink, fresh_flash, mkimage, payload, run

import board as unix_board


def _record_at_boot(d, slot1=None):
    # A pre_boot hook for run(): before the first boot, the journal holds record d (and
    # slot 1 the payload slot1, programmed block by block, when given).
    def pre(boot):
        if boot != 1:
            return
        b = unix_board.Board(FLASH, clock=VirtualClock())
        if slot1 is not None:
            bd = b.slots[1]
            bs = bd.ioctl(5, 0)
            for k in range((len(slot1) + bs - 1) // bs):
                bd.ioctl(6, k)
                blk = bytearray(b"\xff" * bs)
                c = slot1[k * bs : (k + 1) * bs]
                blk[: len(c)] = c
                bd.writeblocks(k, blk, 0)
        b.journal.save(d)
        b.close()

    return pre


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
        # (results the ESP refuses on every cycle: they blocked the job behind them)
        {"stage": "report", "job": "JOB1", "status": 7, "info": "x"},
        {"stage": "report", "job": "JOB1", "status": -1, "info": "x"},
        {"stage": "report", "job": "JOB1", "status": 3, "info": "a\r\nAT+RST"},
        # (a SHA-256 of 64 characters that are not hex digits)
        {
            "stage": "committed",
            "job": "JOB1",
            "slot": 1,
            "version": 2,
            "len": 20000,
            "sha": "zz" * 32,
        },
        # (a result of 2 kept from before, while the factory image runs: it was sent)
        {"stage": "report", "job": "JOB1", "status": 2, "info": "v2 running"},
        {"stage": "report", "job": "JOB1", "status": 2.0, "info": "v2 running", "version": 2},
        # (job ids no notification has: a CR LF split AT+RMOTARESULT into the ESP's
        # commands, here an AT+RST)
        {"stage": "report", "job": "J\r\nAT+RST\r\nX", "status": 3, "info": "x"},
        {"stage": "committed", "job": "JOB1\r\nAT+RST", "slot": 1, "version": 2, "len": 9},
        {"stage": "download", "job": "JOB1\r\nAT+RST", "url": "x", "size": 20064, "slot": 1},
        {
            "stage": "report",
            "job": "JOB9",
            "status": 3,
            "info": "x",
            "download": {"stage": "rolled_back", "job": 'J"\r\nAT+RST', "rb": ["00", 1]},
        },
    )

    def test_an_unusable_record_is_dropped_and_the_job_still_runs(self):
        img = mkimage(payload(20000))
        for d in self.CASES:
            r = run(img, pre_boot=_record_at_boot(d), max_ms=120000)
            self.assertIsNone(r["exc"], d)
            self.assertEqual(_statuses(r)[-1], 2, (d, r["esp"].results))
            self.assertEqual(r["boot"]["slot"], 1, d)
            sent = [c for c in r["esp"].cmds if not c.startswith(b"AT")]
            self.assertEqual(sent, [], d)  # (data after prompts is not in cmds)
            self.assertNotIn(b"AT+RST", r["esp"].cmds, d)

    def test_a_damaged_download_record_never_makes_a_good_job_5(self):
        # A download record cut by a power loss is carried on before the cloud
        # notifies the job again. Its size, still an int but damaged (or a bool, which
        # JSON cannot tell from 1 on CPython), was taken as the notification's: 5
        # "size ... disagrees with header" closed a good job. Now the record's fields
        # must pass the notification parser and match its journalled header; when not,
        # the agent waits for the cloud's notification (none on this boot's fetch), and
        # the next one ends in 2. A sound record is carried on at once.
        pl = payload(20000)
        img = mkimage(pl)
        hdr = hexlify(img[:64]).decode()
        base = {"stage": "download", "job": "JOB1", "url": URL.decode(), "slot": 1}

        def silent(esp):
            esp.fetch_hook = lambda esp: esp.out(b"\r\nOK\r\n")

        for bad in (
            {},
            {"size": -5},
            {"size": True},
            {"size": 10**12},
            {"size": len(img) + 1},
            {"url": "http://"},
            {"url": "http://h/a b"},
            {"fw": "1,2"},
            {"hdr": "00" * 64},
            {"hdr": hexlify(mkimage(payload(300))[:64]).decode()},
        ):
            d = dict(base, size=len(img), hdr=hdr)
            d.update(bad)
            r = run(img, pre_boot=_record_at_boot(d), setup=silent, max_ms=120000)
            self.assertIsNone(r["exc"], bad)
            if not bad:
                self.assertEqual(_statuses(r), [1, 2], r["esp"].results)
                continue
            self.assertEqual(_statuses(r), [], (bad, r["esp"].results))
            self.assertTrue([x for x in r["log"].lines if "journalled download unusable" in x])
            r = run(img, fresh=False, max_ms=120000)  # the cloud notifies the job again
            self.assertEqual(_statuses(r), [1, 2], (bad, r["esp"].results))
            self.assertEqual(r["boot"]["slot"], 1, bad)

    def test_a_commit_record_for_an_image_that_does_not_run_is_never_2(self):
        # A stale or damaged "committed" record naming the running slot (the factory
        # v1 runs from slot 0, not on trial): 2 used to be reported at once, with v1
        # running and nothing downloaded. Version or SHA-256 not the running image's:
        # 3 ("commit lost"), then the job runs and ends in 2 with v2 in slot 1.
        img = mkimage(payload(20000))
        good = hexlify(hashlib.sha256(payload(20000)).digest()).decode()
        for rec in (
            {"slot": 0, "version": 2, "len": 20000, "sha": good},  # v1 runs
            {"slot": 0, "version": 1, "len": 20000, "sha": "00" * 32},  # another v1
        ):
            d = dict(rec, stage="committed", job="JOB1")
            r = run(img, pre_boot=_record_at_boot(d), max_ms=120000)
            self.assertEqual(_statuses(r), [3, 1, 2], d)
            self.assertIn(b'"commit lost"', r["esp"].results[0])
            self.assertEqual(r["boot"]["slot"], 1, d)

    def test_a_commit_record_with_a_version_the_boot_record_cannot_hold_is_dropped(self):
        # The verified image in slot 1 and a "committed" record for it whose version is
        # not a 32-bit unsigned int (the power was cut before the boot record changed):
        # the commit was made again with it. On CPython the boot record raised every
        # cycle, for ever; on MicroPython -1 became v4294967295 and every later image
        # was refused as a downgrade. Such a record is dropped: the job runs again and
        # ends in 2 with v2 recorded.
        pl = payload(20000)
        img = mkimage(pl)
        good = hexlify(hashlib.sha256(pl).digest()).decode()
        for v in (-1, "2", 2.5, 1 << 32, True, None):
            d = {"stage": "committed", "job": "JOB1", "slot": 1, "version": v}
            d.update({"len": len(pl), "sha": good})
            r = run(img, pre_boot=_record_at_boot(d, pl), max_ms=120000)
            self.assertIsNone(r["exc"], v)
            self.assertEqual(_statuses(r)[-1], 2, (v, r["esp"].results))
            self.assertEqual(r["boot"]["slot"], 1, v)
            self.assertEqual(r["rec"].versions[1], 2, v)
            self.assertLess(r["agent"].errors, 3, v)


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
        for st in (
            {"erase_unit": 5000},
            {"erase_unit": -4096},
            {"erase_unit": "4096"},
            {"prog_chunk": 100},
            {"prog_chunk": "256"},
        ):
            fresh_flash(FLASH)
            b = unix_board.Board(FLASH, clock=VirtualClock(), settings=st)
            try:
                with self.assertRaises(ValueError):
                    for_board(b, uart=FakeUART(), clock=b.clock)
            finally:
                b.close()

    def test_settings_of_the_wrong_type_or_range_are_refused_naming_them(self):
        # A value the agent cannot use was taken and failed in every cycle: baud 0 a
        # ZeroDivisionError after each "downloading", "5000" from JSON a TypeError, a
        # crc_span or window_size of 0 a ValueError per job (1,155 agent errors in 300
        # s, nothing reported), and values outside AT+HTTPCGET's ranges (sizes
        # 0..10240 B, timeout 0..180000 ms) an ERROR on every job: 3 for a board's
        # mistake. Each is a ValueError at construction that names the setting.
        cases = (
            ("baud", 0),
            ("baud", "115200"),
            ("http_timeout_ms", "5000"),
            ("http_timeout_ms", -1),
            ("http_timeout_ms", 200000),
            ("rx_size", 20000),
            ("tx_size", -5),
            ("tx_size", 0),
            ("crc_span", 0),
            ("crc_span", -1),
            ("crc_span", 5000),
            ("window_size", 0),
            ("fetch_wait_ms", "300"),
            ("fetch_wait_ms", -1),
            ("backoff_ms", 0),
            ("record_idle_ms", -5),
            ("report_retry_ms", 2.5),
            ("link_wait_ms", 1 << 40),
            ("max_attempts", True),
        )
        for name, v in cases:
            fresh_flash(FLASH)
            with self.assertRaises(ValueError) as cm:
                # (the desktop profile plans its flash mode from the baud rate itself)
                b = unix_board.Board(FLASH, clock=VirtualClock(), settings={name: v})
                try:
                    for_board(b, uart=FakeUART(), clock=b.clock)
                finally:
                    b.close()
            self.assertIn(name, str(cm.exception), (name, v))
        # the same through for_board's keyword arguments
        fresh_flash(FLASH)
        b = unix_board.Board(FLASH, clock=VirtualClock())
        try:
            for kw in ({"fetch_wait_ms": "300"}, {"quiet_ms": -2}, {"prompt_ms": 0}):
                with self.assertRaises(ValueError):
                    for_board(b, uart=FakeUART(), clock=b.clock, **kw)
            # the limits themselves are taken
            st = {"rx_size": 10240, "tx_size": 10240, "http_timeout_ms": 180000, "crc_span": 2048}
            b.settings.update(st)
            a = for_board(b, uart=FakeUART(), clock=b.clock, fetch_wait_ms=0)
            self.assertEqual((a.rx_size, a.http_timeout_ms, a.fetch_wait_ms), (10240, 180000, 0))
        finally:
            b.close()

    def test_no_uart_is_refused_at_construction(self):
        # firmware/main.py on the desktop without RMOTA_UART: 20 AttributeErrors on a
        # None UART, then exit 1. Now for_board() says so at once.
        fresh_flash(FLASH)
        b = unix_board.Board(FLASH, clock=VirtualClock())
        try:
            self.assertIsNone(b.uart)
            with self.assertRaises(ValueError) as cm:
                for_board(b, clock=b.clock)
            self.assertIn("no UART", str(cm.exception))
        finally:
            b.close()


class TestNotifications(unittest.TestCase):
    def test_a_size_or_type_altered_on_the_wire_once_is_not_a_5(self):
        # One digit of +RMFWNOTIFY's size or type dropped, doubled or altered on the
        # wire (about 1 campaign seed in 50,000): the header then "disagreed" with the
        # size (or the type was unknown, or the size under a header) and the good job
        # was closed with 5. The job's notification fetched again decides.
        img = mkimage(payload(9000))
        n = len(img)
        good = b"+RMFWNOTIFY:0,%d,%s,2.0,JOB1" % (n, URL)
        for bad in (
            good.replace(b":0,%d," % n, b":0,%d," % (n // 10)),  # a digit lost
            good.replace(b":0,%d," % n, b":0,%d," % (n * 10 + n % 10)),  # one doubled
            good.replace(b":0,%d," % n, b":0,64,"),
            good.replace(b":0,%d," % n, b":0,9,"),
            good.replace(b":0,", b":1,"),
        ):
            seen = []

            def setup(esp, bad=bad, seen=seen):
                def fetch(esp):
                    esp.out(b"\r\nOK\r\n")
                    if esp.notify:
                        esp.out((good if seen else bad) + b"\r\n")
                        seen.append(1)

                esp.fetch_hook = fetch

            r = run(img, setup=setup, max_ms=120000)
            self.assertEqual(_statuses(r), [1, 2], (bad[:40], r["esp"].results))
            self.assertGreaterEqual(len(seen), 2)
        # the same line every time is the job's own: 5
        r = run(img, setup=lambda esp: setattr(esp, "notify", bad), max_ms=120000)
        self.assertEqual(_statuses(r), [5], r["esp"].results)

    def test_a_notification_in_a_burst_of_other_lines_is_kept(self):
        # The notification, then 12 +RMRECV lines (the application's parameters) before
        # the agent reads the UART again: the URC queue (8) dropped its oldest entry,
        # the notification, and the job waited for good. Lines that carry no state go
        # first now.
        img = mkimage(payload(20000))

        def setup(esp):
            def fetch(esp):
                esp.out(b"\r\nOK\r\n")
                if esp.notify:
                    rest = b"".join(
                        b'+RMRECV:0,"Light",{"Power":%d}\r\n' % (k & 1) for k in range(12)
                    )
                    esp.out(esp.notify + b"\r\n" + rest)

            esp.fetch_hook = fetch

        r = run(img, setup=setup, max_ms=120000)
        self.assertEqual(_statuses(r), [1, 2], r["esp"].results)
        self.assertEqual(r["boot"]["slot"], 1)

    def test_the_queue_drops_lines_without_state_before_a_notification(self):
        u = FakeUART()
        link = ATLink(u, clock=VirtualClock(), urc_queue=3)
        got = []
        link.subscribe(lambda k, line: got.append(line))
        u.feed(b"+RMFWNOTIFY:0,99,http://h/abcdef,2,J\r\nready\r\n")
        u.feed(b"".join(b"+RMRECV:%d\r\n" % k for k in range(4)) + b"\xfe\r\n")
        link.poll()
        self.assertEqual(got, [b"+RMFWNOTIFY:0,99,http://h/abcdef,2,J", b"ready", b"\xfe"])
        self.assertEqual(link.urc_drops, 4)
        # Lines that carry link state (a Wi-Fi or cloud flap) go before a notification
        # or ready: the latest of them still comes through.
        got[:] = []
        u.feed(b"+RMFWNOTIFY:0,99,http://h/abcdef,2,K\r\nready\r\n")
        u.feed(b"WIFI DISCONNECT\r\n+RMDISCONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n")
        link.poll()
        self.assertEqual(got, [b"+RMFWNOTIFY:0,99,http://h/abcdef,2,K", b"ready", b"+RMCONNECTED"])
        self.assertEqual(link.urc_drops, 7)

    def test_a_line_of_exactly_line_max_bytes_is_taken(self):
        # line_max counts the line without its CR LF: the CR used to take a byte of it.
        for lm in (64, 2048):
            u = FakeUART()
            link = ATLink(u, clock=VirtualClock(), line_max=lm)
            got = []
            link.subscribe(lambda k, line: got.append(line))
            fit = b"+RMRECV:" + b"x" * (lm - 8)
            u.feed(fit + b"\r\n" + fit + b"y\r\n+RMCONNECTED\r\n")
            for _ in range(20):
                link.poll()
            self.assertEqual(got, [fit, b"line too long", b"+RMCONNECTED"], lm)
            self.assertEqual(link.parser.overflows, 1, lm)

    def test_a_notification_longer_than_a_line_is_a_logged_error(self):
        # A presigned URL of 2,100 B (AT+HTTPURLCFG takes up to 8,192) in a board whose
        # line_max is 2,048: the line is dropped (DESIGN.md section 2), with an error
        # that says why, counted; nothing is erased or fetched. It was silent.
        url = b"http://127.0.0.1/img.bin?" + b"x" * 2075
        img = mkimage(payload(20000))

        def setup(esp):
            esp.notify = b"+RMFWNOTIFY:0,%d,%s,2.0,JOB1" % (len(img), url)

        r = run(img, setup=setup, max_ms=30000)
        errs = [x for x in r["log"].lines if "+RMFWNOTIFY longer than line_max (2048 B)" in x]
        self.assertGreaterEqual(len(errs), 1)
        self.assertGreaterEqual(r["agent"].errors, 1)
        self.assertFalse(
            [c for c in r["esp"].cmds if c.startswith((b"AT+HTTPURLCFG", b"AT+HTTPCGET"))]
        )
        self.assertEqual(r["esp"].results, [])

    def test_a_notification_malformed_every_time_is_rejected_with_its_reason(self):
        # A job whose notification the parser refuses (a size of 0, a URL that is not
        # ASCII) was only logged: the cloud kept it pending for ever. It is fetched
        # again; the same line three times is the job's own: 5, with the reason.
        img = mkimage(payload(2000))
        for bad, why in (
            (b"+RMFWNOTIFY:0,0,%s,2.0,JOB1" % URL, b"size 0"),
            (b"+RMFWNOTIFY:0,%d,http://h/\xc3\xa9,2.0,JOB1" % len(img), b"bad url"),
            (b"+RMFWNOTIFY:0,+2064,%s,2.0,JOB1" % URL, b"bad size"),
        ):

            def setup(esp, bad=bad):
                esp.notify = bad

            r = run(img, setup=setup, max_ms=60000)
            fetches = [c for c in r["esp"].cmds if c == b"AT+RMOTAFETCH"]
            self.assertEqual(len(fetches), 3, bad)
            self.assertEqual(
                r["esp"].results, [b'AT+RMOTARESULT=0,"JOB1",5,"bad notification: ' + why + b'"']
            )
            self.assertFalse([c for c in r["esp"].cmds if c.startswith(b"AT+HTTPCGET")])
            self.assertEqual(r["boot"]["slot"], 0)

    def test_a_notification_altered_once_is_fetched_again_not_rejected(self):
        # A byte altered on the wire in the notification: the next fetch brings the
        # right line, and the job runs (no 5 for a transient fault).
        img = mkimage(payload(20000))

        def setup(esp):
            good = esp.notify
            esp.sent = 0

            def fetch(esp):
                esp.out(b"\r\nOK\r\n")
                if esp.notify:
                    esp.sent += 1
                    line = (
                        esp.notify.replace(b",%d," % len(img), b",2O064,")
                        if esp.sent == 1
                        else esp.notify
                    )
                    esp.out(line + b"\r\n")

            esp.fetch_hook = fetch
            esp.notify = good

        r = run(img, setup=setup, max_ms=120000)
        self.assertEqual(_statuses(r), [1, 2])
        self.assertEqual(r["boot"]["slot"], 1)

    def test_a_url_the_esp_cannot_take_is_rejected(self):
        # AT+HTTPURLCFG takes 8..8192 bytes: a shorter URL was refused on every try and
        # reported 3, so the cloud retried it for ever. It is permanent: 5.
        img = mkimage(payload(2000))

        def setup(esp):
            esp.notify = b"+RMFWNOTIFY:0,%d,http:/x,2.0,JOB1" % len(img)

        r = run(img, setup=setup, max_ms=30000)
        self.assertEqual(_statuses(r), [5])
        self.assertIn(b"URL of 7 B outside 8..8192", r["esp"].results[0])

    def test_an_image_of_another_size_is_rejected_with_or_without_header_first(self):
        # The URL serves a whole rmota image whose header declares another size than
        # the notification's: with header_first (a 64-byte request) that was 5; without
        # it the whole response, not of the announced size, passed for a page and gave
        # 3 on every cycle. Either way it is the same file: 5, and nothing is installed.
        # A page that is no image (the size neither the announced one nor its own)
        # stays a failed attempt (3).
        img = mkimage(payload(20000))
        cases = [(payload(n, 7), hf) for n in (9000, 30000) for hf in (True, False)]
        cases.append((b"<html>captive portal</html>" * 300, False))
        for served, hf in cases:
            other = mkimage(served) if served[:1] != b"<" else served

            def setup(esp, other=other):
                esp.notify = b"+RMFWNOTIFY:0,%d,%s,2.0,JOB1" % (len(img), URL)
                esp.image = other

            r = run(img, setup=setup, settings={"header_first": hf}, max_ms=60000)
            case = (len(other), hf)
            self.assertEqual(r["board"].running_slot(), 0, case)
            if served[:1] == b"<":
                self.assertEqual(_statuses(r)[-1], 3, case)
                self.assertIn(b"not the announced file (8100 B", r["esp"].results[-1])
                continue
            self.assertEqual(_statuses(r), [1, 5], case)
            self.assertIn(b'5,"size 20064 disagrees with header"', r["esp"].results[-1])
            self.assertEqual(r["esp"].cgets, 2, case)  # the same header twice


class TestResultsFit(unittest.TestCase):
    def lengths(self, res):
        # (command line with CR LF, the ESP's result JSON) of each AT+RMOTARESULT
        out = []
        for line in res:
            parts = line[len(b"AT+RMOTARESULT=0,") :]
            job = parts[1 : parts.index(b'",')]
            info = parts[parts.rindex(b',"') + 2 : -1].replace(b"\\,", b",")
            js = b'{"ota_job_id":"%s","status":"in-progress","additional_info":"%s"}'
            out.append((len(line) + 2, len(js % (job, info))))
        return out

    def test_a_job_id_too_long_for_any_result_is_refused_before_the_flash(self):
        # A 300-character job id: every AT+RMOTARESULT overran the ESP's 256-byte
        # command line and was refused, after the image was installed. Nothing is
        # fetched now; the error says why.
        img = mkimage(payload(20000))
        job = "J" * 300

        def setup(esp):
            esp.notify = b"+RMFWNOTIFY:0,%d,%s,2.0,%s" % (len(img), URL, job.encode())

        r = run(img, setup=setup, max_ms=30000)
        self.assertEqual(r["esp"].results, [])
        self.assertFalse([c for c in r["esp"].cmds if c.startswith(b"AT+HTTPCGET")])
        self.assertTrue([x for x in r["log"].lines if "job id of 300 B too long" in x])
        self.assertEqual(r["boot"]["slot"], 0)

    def test_a_long_job_id_gets_results_that_fit(self):
        # A 150-character job id leaves room for a short <info>: each result is cut to
        # fit both the 256-byte command line and the ESP's 256-byte result JSON.
        img = mkimage(payload(20000))
        job = "J" * 150
        self.assertGreaterEqual(info_room(job), 20)

        def setup(esp):
            esp.notify = b"+RMFWNOTIFY:0,%d,%s,2.0,%s" % (len(img), URL, job.encode())

        r = run(img, setup=setup, max_ms=120000)
        self.assertEqual(_statuses(r), [1, 2])
        for cmd, js in self.lengths(r["esp"].results):
            self.assertLessEqual(cmd, 256)
            self.assertLess(js, 256)

    def test_info_is_cut_below_80_characters_at_a_word(self):
        why = "not the announced file (30064 B, 64 expected: image for board 0xffffffffffffffff)"
        got = clip_info(why)
        self.assertEqual(got, "not the announced file (30064 B, 64 expected: image for board...")
        self.assertLess(len(got), 80)
        self.assertEqual(clip_info("short: 72 of 76 B"), "short: 72 of 76 B")
        self.assertEqual(clip_info("x" * 79), "x" * 79)
        self.assertEqual(clip_info("x" * 80), "x" * 76 + "...")
        # (escaped commas count: the ESP's line holds them escaped)
        self.assertEqual(len(clip_info("a," * 50, 40).replace(",", "\\,")), 40)
        self.assertEqual(info_room("JOB1"), 79)
        self.assertLess(info_room("J" * 200), 0)


class TestProgressCallback(unittest.TestCase):
    def test_a_progress_callback_that_raises_does_not_fail_the_download(self):
        # An application's display callback that always raises: it ran unprotected in
        # the record callback, so every record was cut short and every job failed 3.
        img = mkimage(payload(30000))
        calls = []

        def progress(done, total):
            calls.append(done)
            raise RuntimeError("display gone")

        r = run(img, max_ms=120000, agent_kw={"progress": progress})
        self.assertEqual(_statuses(r), [1, 2])
        self.assertEqual(r["boot"]["slot"], 1)
        self.assertGreater(len(calls), 2)
        errs = [x for x in r["log"].lines if "progress callback failed" in x]
        self.assertEqual(len(errs), 1)  # logged once per job

    def test_callbacks_that_pump_the_agent_or_the_link_change_nothing(self):
        # A display callback that pumps the main loop: agent.poll() from inside it fed
        # the parser in the middle of a record (every attempt a framing error, 3 for a
        # good image), agent.run() from it raised AttributeErrors, and a URC subscriber
        # that sent a command abandoned the agent's in the middle of its response. From
        # inside the agent poll() and run() return at once; from inside the link its
        # poll() returns 0 and sending raises LinkError.
        img = mkimage(payload(30000))
        agents, seen = [], []

        def progress(done, total):
            a = agents[0]
            seen.append((a.poll(), a.run(timeout_ms=10), a.run(until_idle=True), a.link.poll()))

        def sub(kind, line):
            a = agents[0]
            try:
                a.link.command(b"AT+GMR")
            except Exception as e:
                seen.append(repr(e))
            seen.append(a.link.poll())

        import scriptesp

        orig = scriptesp.for_board

        def make(*args, **kw):
            a = orig(*args, **kw)
            agents[:] = [a]
            a.link.subscribe(sub)
            return a

        scriptesp.for_board = make
        try:
            r = run(img, max_ms=120000, agent_kw={"progress": progress})
        finally:
            scriptesp.for_board = orig
        self.assertEqual(_statuses(r), [1, 2], r["esp"].results)
        self.assertEqual(r["boot"]["slot"], 1)
        calls = [x for x in seen if isinstance(x, tuple)]
        self.assertGreater(len(calls), 2)
        self.assertEqual({(n, m) for n, _, _, m in calls}, {(0, 0)})
        self.assertEqual({s for _, s, u, _ in calls} | {u for _, _, u, _ in calls}, {"download"})
        errs = [x for x in seen if isinstance(x, str)]
        self.assertTrue(errs)
        self.assertEqual({x[:9] for x in errs}, {"LinkError"})
        self.assertEqual({x for x in seen if isinstance(x, int)}, {0})
        self.assertNotIn(b"AT+GMR", r["esp"].cmds)
        self.assertEqual(agents[0].progress_errors, 0)


def _refuse_rst_twice(esp):
    # An ESP that answers AT+RST with ERROR twice, then restarts (esp.rst counts them).
    esp.rst = 0

    def cmd(esp, line):
        if line != b"AT+RST":
            return False
        esp.rst += 1
        esp.out(b"\r\nERROR\r\n" if esp.rst < 3 else b"\r\nOK\r\n\r\nready\r\n")
        return True

    esp.cmd_hook = cmd


class TestESPRestart(unittest.TestCase):
    """The ESP's own update (``+RMOTA:2``): the host restarts it with ``AT+RST`` at a
    safe moment, and ESP-AT does not print the same status twice."""

    def _agent(self, esp_setup, clock=None):
        fresh_flash(FLASH)
        clock = clock or VirtualClock()
        b = unix_board.Board(FLASH, clock=clock, settings=dict(SHORT))
        uart = FakeUART()
        esp = ESP(uart, mkimage(payload(2000)))
        esp.notify = None  # no host job
        esp_setup(esp)
        log = Logsink()
        agent = for_board(b, uart=uart, clock=clock, log=Logger("rmota", sink=log))
        return b, clock, esp, log, agent

    def _poll(self, agent, clock, ms):
        t = clock.now_ms + ms
        while clock.now_ms < t:
            if not agent.poll():
                clock.sleep_ms(5)

    def test_a_refused_restart_is_tried_again_until_the_esp_restarts(self):
        # AT+RST answered ERROR twice: the request used to be dropped, and the new ESP
        # firmware never ran. It is kept, tried again after a back-off, until ready.
        b, clock, esp, log, agent = self._agent(_refuse_rst_twice)
        esp.out(b"+RMOTA:1\r\n+RMOTA:2\r\n")
        self._poll(agent, clock, 120000)
        b.close()
        self.assertEqual(esp.rst, 3)
        self.assertFalse(agent.esp_restart_wanted)
        self.assertTrue(agent.idle)
        failed = [x for x in log.lines if "ESP restart failed (AT+RST: ERROR)" in x]
        self.assertEqual(len(failed), 2, log.lines)
        self.assertEqual(agent.errors, 0)

    def test_the_application_command_in_flight_is_not_abandoned_by_a_wake(self):
        # The application sent a command while the agent was idle (busy() False); a
        # URC woke the agent before the answer came. The agent sent AT over it: the
        # application got a timeout and its response line went to the URC handlers.
        b, clock, esp, log, agent = self._agent(lambda esp: None)
        self._poll(agent, clock, 10000)
        self.assertTrue(agent.idle)
        esp.cmd_hook = lambda esp, line: line == b"AT+RMPARAM?"  # answered later
        c = agent.link.send(b"AT+RMPARAM?", 3000)
        n = len(esp.cmds)
        esp.out(b"+RMOTA:2\r\n")  # wakes the agent (a restart is wanted)
        self._poll(agent, clock, 500)
        self.assertEqual(len(esp.cmds), n)  # the agent waits for the answer
        esp.cmd_hook = None
        esp.out(b"+RMPARAM:light,power,1\r\n\r\nOK\r\n")
        self._poll(agent, clock, 30000)
        b.close()
        self.assertEqual((c.final, c.lines), (b"OK", [b"+RMPARAM:light,power,1"]))
        self.assertIn(b"AT+RST", esp.cmds[n:])

    def test_the_esp_is_restarted_before_the_host_reboots_to_commit_again(self):
        # A power cut between the journal's commit record and the boot record: the
        # next start commits again and reboots. A +RMOTA:2 that came meanwhile is in
        # RAM only, so AT+RST goes before that reboot too.
        pl = payload(20000)
        img = mkimage(pl)
        d = {
            "stage": "committed",
            "job": "JOB1",
            "slot": 1,
            "version": 2,
            "len": len(pl),
            "sha": hexlify(hashlib.sha256(pl).digest()).decode(),
        }

        def setup(esp):
            esp.told = False

            def cmd(esp, line):
                if line == b"ATE0" and not esp.told:
                    esp.told = True
                    esp.out(b"\r\nOK\r\n+RMOTA:1\r\n+RMOTA:2\r\n")
                    return True
                if line == b"AT+RST":
                    esp.out(b"\r\nOK\r\n\r\nready\r\n")
                    return True
                return False

            esp.cmd_hook = cmd

        r = run(img, setup=setup, pre_boot=_record_at_boot(d, slot1=pl), max_ms=120000)
        self.assertEqual(r["esp"].cmds.count(b"AT+RST"), 1)
        self.assertEqual(r["boots"], 2)
        self.assertEqual(_statuses(r), [2])
        self.assertEqual(r["boot"]["slot"], 1)

    def test_an_esp_that_restarts_by_itself_is_not_restarted_again(self):
        # +RMOTA:2, then the ESP reboots on its own (ready, and it echoes commands
        # again: its RAM is gone): the new firmware runs. AT+RST after that was a second
        # restart for nothing. A ready the ESP's echo does not bear out (image bytes
        # passed for one: the link lets a doubtful ready through) keeps the request.
        for echo in (True, False):

            def setup(esp, echo=echo):
                esp.echo = False

                def cmd(esp, line):
                    if esp.echo:
                        esp.out(line + b"\r\n")  # (then answered as usual)
                        esp.echo = line != b"ATE0"
                    if line == b"AT+RST":
                        esp.out(b"\r\nOK\r\n\r\nready\r\n")
                        esp.echo = True
                        return True
                    return False

                esp.cmd_hook = cmd

            b, clock, esp, log, agent = self._agent(setup)
            self._poll(agent, clock, 10000)
            esp.echo = echo
            esp.out(b"+RMOTA:1\r\n+RMOTA:2\r\n\r\nready\r\n")
            self._poll(agent, clock, 60000)
            b.close()
            self.assertEqual(esp.cmds.count(b"AT+RST"), 0 if echo else 1, echo)
            self.assertFalse(agent.esp_restart_wanted)
            self.assertTrue(agent.idle)
            self.assertEqual(agent.errors, 0)

    def test_a_restart_refused_before_the_host_reboot_is_kept_across_it(self):
        # +RMOTA:2 during a host download; the AT+RST before the host's reboot is
        # refused. The request was in RAM only and went with the reboot; it now goes
        # into the commit record and is taken up after the reboot.
        img = mkimage(payload(20000))

        def setup(esp):
            esp.told = False
            esp.rst = 0

            def cget(esp, start, data):
                pre = b"" if esp.told else b"+RMOTA:1\r\n+RMOTA:2\r\n"
                esp.told = True
                return pre + esp.records(data) + b"\r\nOK\r\n"

            def cmd(esp, line):
                if line != b"AT+RST":
                    return False
                esp.rst += 1
                esp.out(b"\r\nERROR\r\n" if esp.rst == 1 else b"\r\nOK\r\n\r\nready\r\n")
                return True

            esp.cget_hook = cget
            esp.cmd_hook = cmd

        r = run(img, setup=setup, max_ms=120000)
        self.assertEqual(r["esp"].rst, 2)
        self.assertEqual(r["boots"], 2)
        self.assertEqual(_statuses(r), [1, 2])
        self.assertFalse(r["agent"].esp_restart_wanted)
        self.assertEqual(r["boot"]["slot"], 1)

    def test_the_applications_next_command_and_its_data_phase_go_first(self):
        # The agent, woken while an application command was in flight, waited for that
        # one only: the application's next command (sent once busy() was False again)
        # was abandoned by the agent's AT; and after a data prompt (">") the agent's
        # AT went into the data the ESP was reading (AT+CIPSEND's 5 bytes).
        b, clock, esp, log, agent = self._agent(lambda esp: None)
        self._poll(agent, clock, 10000)
        raw = []
        on_write = agent.link.uart.on_write

        def spy(data):
            raw.append(bytes(data))
            on_write(data)

        agent.link.uart.on_write = spy
        held = (b"AT+RMPARAM?", b"AT+RMNODEINIT?", b"AT+CIPSEND=0,5")
        esp.cmd_hook = lambda esp, line: line in held  # answered below
        x = agent.link.send(b"AT+RMPARAM?", 3000)
        esp.out(b"+RMOTA:2\r\n")  # wakes the agent
        self._poll(agent, clock, 100)
        esp.out(b"\r\nOK\r\n")
        agent.link.poll()  # (the application's own poll sees X done...)
        y = agent.link.send(b"AT+RMNODEINIT?", 3000)  # (...and sends Y)
        self._poll(agent, clock, 100)
        self.assertEqual(raw[-1], b"\r\n")  # nothing after Y's line
        esp.out(b"+RMNODEINIT:1\r\n\r\nOK\r\n")
        agent.link.poll()
        z = agent.link.send(b"AT+CIPSEND=0,5", 3000, prompt=5)
        self._poll(agent, clock, 100)
        esp.out(b"\r\nOK\r\n\r\n>")
        self._poll(agent, clock, 50)
        n = len(raw)
        agent.link.send_data(b"hello")
        self.assertEqual(raw[n - 1 :], [b"\r\n", b"hello"])  # the data right after Z
        esp.cmd_hook = None
        esp.out(b"\r\nSEND OK\r\n")
        self._poll(agent, clock, 30000)
        b.close()
        self.assertEqual((x.final, y.final, y.lines), (b"OK", b"OK", [b"+RMNODEINIT:1"]))
        self.assertEqual(z.final, b">")
        self.assertIn(b"AT+RST", esp.cmds)  # the agent's turn came after them


class _WrapClock(VirtualClock):
    # MicroPython's ticks: ticks_ms() wraps at 2**30, ticks_diff() is signed within it.
    def ticks_ms(self):
        return self.now_ms & 0x3FFFFFFF

    def ticks_diff(self, a, b):
        return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000


class TestAgentWaits(unittest.TestCase):
    """How long the agent waits for the application's command, and after errors."""

    _agent = TestESPRestart._agent
    _poll = TestESPRestart._poll

    def test_an_application_command_that_never_times_out_does_not_stop_the_agent(self):
        # timeout_ms of 2**29 or more never expires in ticks_diff(): the agent waited
        # for it for ever. It waits at most a minute (from when it first saw it).
        b, clock, esp, log, agent = self._agent(lambda esp: None, _WrapClock())
        self._poll(agent, clock, 10000)
        esp.cmd_hook = lambda esp, line: line == b"AT+RMPARAM?"  # never answered
        agent.link.send(b"AT+RMPARAM?", 1 << 29)
        esp.out(b"+RMOTA:2\r\n")
        n = len(esp.cmds)
        self._poll(agent, clock, 59000)
        self.assertEqual(len(esp.cmds), n)  # waiting
        self._poll(agent, clock, 60000)
        b.close()
        self.assertIn(b"AT+RST", esp.cmds[n:])

    def test_a_prompt_answered_days_ago_does_not_hold_the_agent(self):
        # The application's last command was a prompt command whose data it sent
        # otherwise (or dropped); days later the ticks have wrapped and the old
        # command looked fresh again: the agent waited days. Now its timeout at most,
        # from when the agent first looks at it.
        b, clock, esp, log, agent = self._agent(lambda esp: None, _WrapClock())
        self._poll(agent, clock, 10000)
        esp.cmd_hook = lambda esp, line: line == b"AT+HTTPCHEAD=5"
        agent.link.send(b"AT+HTTPCHEAD=5", 2000, prompt=5)
        esp.out(b"\r\nOK\r\n\r\n>")
        agent.link.poll()
        esp.cmd_hook = None
        clock.sleep_ms(7 * 24 * 3600 * 1000)  # a week, idle
        n = len(esp.cmds)
        esp.out(b"+RMOTA:2\r\n")
        self._poll(agent, clock, 5000)
        b.close()
        self.assertIn(b"AT+RST", esp.cmds[n:])

    def test_a_uart_glitch_of_a_few_polls_does_not_keep_a_job_waiting_long(self):
        # Each failed read grew the agent's error back-off: ten failed polls in a row
        # (a 50 ms glitch) kept the next notification waiting backoff_max_ms.
        b, clock, esp, log, agent = self._agent(lambda esp: None)
        self._poll(agent, clock, 10000)
        uart = agent.link.uart
        real = uart.readinto
        fails = [10]

        def glitch(*a):
            if fails[0]:
                fails[0] -= 1
                raise OSError(5, "EIO")
            return real(*a)

        uart.readinto = glitch
        for _ in range(10):
            agent.poll()
            clock.sleep_ms(5)
        self.assertEqual(agent.errors, 10)
        n = len(esp.cmds)
        esp.out(b"+RMOTA:2\r\n")
        self._poll(agent, clock, 100)  # backoff_ms is 50, backoff_max_ms 200
        self.assertTrue(esp.cmds[n:])  # the agent is at work again
        self._poll(agent, clock, 5000)
        b.close()
        self.assertIn(b"AT+RST", esp.cmds[n:])


class _StrictWrapClock(_WrapClock):
    # ... whose ticks_diff() notes what a 32-bit port cannot take: an argument outside
    # 0..2**30-1 (a sum of ticks, which time.ticks_diff() documents as invalid: there
    # it is a long int read as garbage).
    def __init__(self, start_ms=0):
        _WrapClock.__init__(self, start_ms)
        self.bad = []

    def ticks_diff(self, a, b):
        if not (0 <= a < 1 << 30 and 0 <= b < 1 << 30):
            self.bad.append((a, b))
        return _WrapClock.ticks_diff(self, a, b)


class _FailingSlot:
    # The slot's block device, with ``op`` ("read" or "write") of block ``blk`` raising
    # EIO every time: flash that failed for good.
    def __init__(self, dev, op, blk):
        self.dev, self.op, self.blk = dev, op, blk

    def readblocks(self, b, buf, off=0):
        if self.op == "read" and b == self.blk:
            raise OSError(5, "EIO")
        return self.dev.readblocks(b, buf, off)

    def writeblocks(self, b, buf, off=0):
        if self.op == "write" and b == self.blk:
            raise OSError(5, "EIO")
        return self.dev.writeblocks(b, buf, off)

    def ioctl(self, op, arg):
        return self.dev.ioctl(op, arg)


class TestHardwareFaults(unittest.TestCase):
    """Flash, filesystem, heap and clock faults (adversarial round 7)."""

    def _run(self, img, **kw):
        return run(img, max_ms=300000, **kw)

    def test_a_slot_that_fails_for_good_ends_in_3_not_in_resumes_for_ever(self):
        # The last (partial) block programmed in finish(), or a read-back: an OSError
        # there ended the cycle, the next one resumed from the journal and failed at
        # the same spot, for ever (463 "resuming" in 120 s, never a 3). The same job
        # failing in max_attempts cycles in a row is now reported 3 with the error.
        pl = payload(40000)
        img = mkimage(pl)
        real = unix_board.Board.inactive_slot
        for op, blk in (("write", 9), ("read", 5)):

            def slot(self, op=op, blk=blk):
                s = real(self)
                s.bdev = _FailingSlot(s.bdev, op, blk)
                return s

            unix_board.Board.inactive_slot = slot
            try:
                r = self._run(img)
            finally:
                unix_board.Board.inactive_slot = real
            self.assertEqual(r["end"], "idle", op)
            self.assertEqual(_statuses(r)[-1], 3, (op, r["esp"].results))
            self.assertIn(b'"error: [Errno 5] EIO', r["esp"].results[-1])  # (MP: "EIO: EIO")
            self.assertLessEqual(len(r["esp"].results), 4, op)  # 1, resumes, 3
            self.assertEqual(r["boot"]["slot"], 0, op)  # nothing committed

    def test_a_full_journal_filesystem_costs_no_result(self):
        # ENOSPC on the commit record: 3 after max_attempts cycles, not resumes for
        # ever. ENOSPC on the result record: the 2 was never sent (the result had to be
        # journalled first); it is sent anyway.
        from rmota.journal import Journal

        pl = payload(20000)
        img = mkimage(pl)
        real = Journal.save
        for stage, want in (("committed", [1, 3]), ("report", [1, 2])):

            def save(self, d, stage=stage):
                if d.get("stage") == stage:
                    raise OSError(28, "ENOSPC")
                return real(self, d)

            Journal.save = save
            try:
                r = self._run(img)
            finally:
                Journal.save = real
            self.assertEqual(r["end"], "idle", stage)
            st = _statuses(r)
            self.assertEqual((st[0], st[-1]), tuple(want), (stage, r["esp"].results))
            if stage == "committed":
                self.assertIn(b"ENOSPC", r["esp"].results[-1])
                self.assertEqual(r["boot"]["slot"], 0)
            else:
                self.assertEqual(st.count(2), 1)
                self.assertEqual(r["boot"]["slot"], 1)

    def test_a_journal_that_cannot_forget_a_delivered_result_does_not_resend_it(self):
        # clear() failing for good: the delivered 2 stayed in the journal and went out
        # again every cycle (233 times in 60 s). It is sent once.
        from rmota.journal import Journal

        img = mkimage(payload(20000))
        real = Journal.clear

        def clear(self):
            raise OSError(5, "EIO")

        Journal.clear = clear
        try:
            r = self._run(img)
        finally:
            Journal.clear = real
        self.assertEqual(r["end"], "idle")
        self.assertEqual(_statuses(r), [1, 2], r["esp"].results)

    def test_no_memory_to_parse_a_notification_fetches_it_again(self):
        # A MemoryError parsing the 1-2 KB +RMFWNOTIFY line was swallowed by the link
        # (a subscriber's error): nothing logged, no fetch, the job dropped for hours.
        import rmota.agent as agent_mod

        img = mkimage(payload(20000))
        real = agent_mod.parse_fwnotify
        left = [2]

        def parse(line):
            if left[0]:
                left[0] -= 1
                raise MemoryError("memory allocation failed")
            return real(line)

        agent_mod.parse_fwnotify = parse
        try:
            r = self._run(img)
        finally:
            agent_mod.parse_fwnotify = real
        self.assertEqual(_statuses(r), [1, 2], r["esp"].results)  # (never a 5)
        self.assertEqual(left, [0])
        self.assertEqual(r["agent"].link.subscriber_errors, 0)
        self.assertTrue([x for x in r["log"].lines if "+RMFWNOTIFY not parsed" in x])

    def test_a_uart_read_error_during_a_download_costs_no_attempt(self):
        # A failed read in the middle of a response ended the cycle's sink while its
        # generator ran on: the rest of the response was dropped as stray records.
        img = mkimage(payload(60000))
        uart = FakeUART()
        real = uart.readinto
        n = [0]

        def readinto(*a):
            n[0] += 1
            if n[0] % 7 == 0:
                raise OSError(5, "EIO")
            return real(*a)

        uart.readinto = readinto
        r = self._run(img, uart=uart)
        self.assertEqual(_statuses(r), [1, 2], r["esp"].results)
        self.assertEqual(r["esp"].cgets, 2)  # the header, then the image: no resume

    def test_deadlines_across_the_ticks_wrap_are_never_sums_of_ticks(self):
        # Back-offs were ticks_ms() + ms: past 2**30 a long int that a 32-bit port's
        # ticks_diff() reads as garbage (a back-off ending at once or in days).
        clock = _StrictWrapClock((1 << 30) - 370)  # (the first AT+RST fails just before)
        b, clock, esp, log, agent = TestESPRestart._agent(self, _refuse_rst_twice, clock)
        esp.out(b"+RMOTA:1\r\n+RMOTA:2\r\n")
        TestESPRestart._poll(self, agent, clock, 120000)
        b.close()
        self.assertEqual(esp.rst, 3)  # tried again after each back-off, across the wrap
        self.assertFalse(agent.esp_restart_wanted)
        self.assertEqual(clock.bad, [])
