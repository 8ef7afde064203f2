"""tools/espsim.py, the virtual-time ESP-AT model of the fault campaign: the wire bytes of
DESIGN.md section 1 (the same tokens as tools/espat_emu.py), the RainMaker job, the S3
server and each fault. Runs under CPython (pytest) and MicroPython (mp_run.py)."""

import sys
import unittest

_d = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
if _d + "/../../tools" not in sys.path:
    sys.path.append(_d + "/../../tools")

from espsim import (  # noqa: E402
    BUSY,
    ERROR,
    OK,
    PROMPT,
    READY,
    SET_OK,
    ESPSim,
    Faults,
    parse_command,
    parse_params,
    parse_range,
    s3_error_body,
)
from rmota.compat import VirtualClock  # noqa: E402

PATH = "/fw/app.img"


def _image(n):
    out = bytearray(n)
    x = 12345
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


IMG = _image(9000)


class Host:
    """The host's end of the wire, polling every virtual millisecond."""

    def __init__(self, **kw):
        self.clock = VirtualClock()
        self.sim = ESPSim(self.clock, **kw)
        self.sim.server.add(PATH, IMG)
        self.buf = bytearray(4096)

    def send(self, data):
        self.sim.write(data)

    def run(self, ms):
        out = bytearray()
        for _ in range(ms):
            self.clock.sleep_ms(1)
            n = self.sim.readinto(self.buf)
            if n:
                out += self.buf[:n]
        return bytes(out)

    def cmd(self, line, ms=20):
        self.send(line + b"\r\n")
        return self.run(ms)

    def quiet(self):
        # ATE0 and SYSLOG=1, as the agent does
        self.cmd(b"ATE0")
        self.cmd(b"AT+SYSLOG=1")

    def set_url(self, url):
        url = url.encode() if isinstance(url, str) else url
        got = self.cmd(b"AT+HTTPURLCFG=%d" % len(url))
        assert got.endswith(PROMPT), got
        self.send(url)
        return self.run(20)


def records(data):
    """Split HTTPCGET output into (payload bytes, list of record sizes, the rest)."""
    payload = bytearray()
    sizes = []
    rest = bytearray()
    i = 0
    while i < len(data):
        if data[i : i + 10] == b"+HTTPCGET:":
            j = data.index(b",", i)
            n = int(data[i + 10 : j])
            payload += data[j + 1 : j + 1 + n]
            sizes.append(n)
            if data[j + 1 + n : j + 3 + n] != b"\r\n":
                raise AssertionError("record not ended by CRLF at %d" % i)
            i = j + 3 + n
        else:
            rest.append(data[i])
            i += 1
    return bytes(payload), sizes, bytes(rest)


class TestHelpers(unittest.TestCase):
    def test_parse_params(self):
        self.assertEqual(parse_params(b'0,"a\\,b\\"c",3,'), [0, b'a,b"c', 3, None])
        self.assertEqual(parse_params(b'"",2048,,5000'), [b"", 2048, None, 5000])
        with self.assertRaises(ValueError):
            parse_params(b'"open')

    def test_parse_command(self):
        self.assertEqual(parse_command(b"AT\r\n"), ("ok",))
        self.assertEqual(parse_command(b"ATE0\r\n"), ("echo", False))
        self.assertEqual(
            parse_command(b"AT+HTTPURLCFG?\r\n"), ("cmd", b"+HTTPURLCFG", "query", None)
        )
        self.assertEqual(parse_command(b"AT+X=1\r\n"), ("cmd", b"+X", "set", [1]))
        self.assertEqual(parse_command(b"AT+RST\r\n"), ("cmd", b"+RST", "exe", None))
        self.assertEqual(parse_command(b"hello\r\n")[0], "error")
        self.assertEqual(parse_command(b"AT\r\n", over=True), ("error", 0x01070000))

    def test_parse_range(self):
        self.assertEqual(parse_range("bytes=100-", 1000), (100, 999))
        self.assertEqual(parse_range("bytes=100-199", 1000), (100, 199))
        self.assertEqual(parse_range("bytes=-10", 1000), (990, 999))
        self.assertEqual(parse_range("bytes=1000-", 1000), "unsatisfiable")
        self.assertIsNone(parse_range("bytes=1-2,5-6", 1000))


class TestWire(unittest.TestCase):
    def test_echo_ok_ate0(self):
        h = Host()
        self.assertEqual(h.cmd(b"AT"), b"AT\r\n" + OK)
        self.assertEqual(h.cmd(b"ATE0"), b"ATE0\r\n" + OK)
        self.assertEqual(h.cmd(b"AT"), OK)

    def test_errors_and_syslog_codes(self):
        h = Host(echo=False)
        self.assertEqual(h.cmd(b"AT+NOPE"), ERROR)
        self.assertEqual(h.cmd(b"AT+SYSLOG=1"), OK)
        self.assertEqual(h.cmd(b"AT+NOPE"), b"ERR CODE:0x01090000\r\n" + ERROR)
        self.assertEqual(h.cmd(b"hello"), b"ERR CODE:0x01030000\r\n" + ERROR)
        self.assertEqual(h.cmd(b"AT+" + b"X" * 300), b"ERR CODE:0x01070000\r\n" + ERROR)

    def test_urlcfg_prompt_set_ok_query(self):
        h = Host(echo=False)
        self.assertEqual(h.cmd(b"AT+HTTPURLCFG=12"), PROMPT)
        h.send(b"http://x/abc")
        self.assertEqual(h.run(10), SET_OK)
        self.assertEqual(h.cmd(b"AT+HTTPURLCFG?"), b"+HTTPURLCFG:12,http://x/abc\r\n" + OK)

    def test_urlcfg_waits_for_len_bytes_and_refuses_nul(self):
        h = Host(echo=False)
        self.assertEqual(h.cmd(b"AT+HTTPURLCFG=10"), PROMPT)
        h.send(b"http://")
        self.assertEqual(h.run(100), b"")  # waits for ever
        h.send(b"ab\x00")
        self.assertEqual(h.run(10), ERROR)
        self.assertEqual(h.cmd(b"AT+HTTPURLCFG=4"), ERROR)  # below 8

    def test_httpcget_records_reassemble_the_image(self):
        h = Host(echo=False, seed=3)
        h.set_url("https://bucket.example/fw/app.img?X-Amz-Expires=86400")
        out = h.cmd(b'AT+HTTPCGET="",2048,512,5000', 2000)
        payload, sizes, rest = records(out)
        self.assertEqual(payload, IMG)
        self.assertEqual(rest, OK)
        self.assertTrue(all(1 <= n <= 512 for n in sizes), sizes)
        self.assertGreater(len(set(sizes)), 3)  # sizes vary: any 1..rx size

    def test_no_url_is_error(self):
        h = Host(echo=False)
        self.assertEqual(h.cmd(b'AT+HTTPCGET=""', 200), ERROR)

    def test_range_header_stays_until_cleared(self):
        h = Host(echo=False)
        h.set_url("https://b/fw/app.img")
        hdr = b"Range: bytes=8000-"
        self.assertEqual(h.cmd(b"AT+HTTPCHEAD=%d" % len(hdr)), PROMPT)
        h.send(hdr)
        self.assertEqual(h.run(10), OK)
        for _ in range(2):
            payload, _, rest = records(h.cmd(b'AT+HTTPCGET=""', 1000))
            self.assertEqual(payload, IMG[8000:])
        self.assertEqual(h.cmd(b"AT+HTTPCHEAD=0"), OK)
        payload, _, rest = records(h.cmd(b'AT+HTTPCGET=""', 2000))
        self.assertEqual(payload, IMG)
        self.assertEqual([q["status"] for q in h.sim.server.requests], [206, 206, 200])

    def test_httpchead_needs_a_colon(self):
        h = Host(echo=False)
        self.assertEqual(h.cmd(b"AT+HTTPCHEAD=5"), PROMPT)
        h.send(b"Range")
        self.assertEqual(h.run(10), ERROR)

    def test_error_status_streams_the_body_then_err_code(self):
        for status in (403, 404, 416, 500):
            h = Host(echo=False)
            h.quiet()
            h.sim.server.fail_next = [status]
            h.set_url("https://b/fw/app.img")
            payload, _, rest = records(h.cmd(b'AT+HTTPCGET=""', 1000))
            self.assertEqual(payload, s3_error_body(status, PATH))
            self.assertEqual(rest, b"ERR CODE:0x010a7%03x\r\n" % status + ERROR)

    def test_range_beyond_end_is_416_ignored_range_is_whole(self):
        h = Host(echo=False)
        h.quiet()
        h.set_url("https://b/fw/app.img")
        hdr = b"Range: bytes=9000-"
        h.cmd(b"AT+HTTPCHEAD=%d" % len(hdr))
        h.send(hdr)
        h.run(10)
        _, _, rest = records(h.cmd(b'AT+HTTPCGET=""', 1000))
        self.assertEqual(rest, b"ERR CODE:0x010a71a0\r\n" + ERROR)
        h.sim.server.ignore_range = -1
        payload, _, rest = records(h.cmd(b'AT+HTTPCGET=""', 2000))
        self.assertEqual(payload, IMG)
        self.assertEqual(rest, OK)
        self.assertTrue(h.sim.server.requests[-1]["ignored"])

    def test_missing_file_is_404(self):
        h = Host(echo=False)
        h.quiet()
        h.set_url("https://b/nothing")
        _, _, rest = records(h.cmd(b'AT+HTTPCGET=""', 1000))
        self.assertEqual(rest, b"ERR CODE:0x010a7194\r\n" + ERROR)

    def test_busy_while_httpcget_runs(self):
        h = Host(echo=False)
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        first = h.run(100)
        h.send(b"AT\r\n")
        out = first + h.run(2000)
        payload, _, rest = records(out)
        self.assertEqual(payload, IMG)
        self.assertEqual(rest, BUSY + OK)

    def test_pacing_on_virtual_time(self):
        h = Host(echo=False, baud=115200)
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET="",2048,2048,5000\r\n')
        got = [len(h.run(100)) for _ in range(9)]
        # 11.52 bytes a millisecond once the response starts (20 ms server latency)
        self.assertTrue(900 <= got[0] <= 1000, got)
        self.assertTrue(all(1100 <= n <= 1200 for n in got[1:7]), got)

    def test_no_pacing_when_baud_none(self):
        h = Host(echo=False, baud=None)
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        payload, _, rest = records(h.run(25))
        self.assertEqual(payload, IMG)

    def test_host_power_off_loses_bytes(self):
        h = Host(echo=False)
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        h.run(200)
        h.sim.host_power(False)
        h.clock.sleep_ms(300)
        h.sim.host_power(True)
        out = h.run(1000)
        payload, _, _ = records(out[out.index(b"+HTTPCGET:") :])
        self.assertGreater(h.sim.lost_host_off, 3000)
        self.assertTrue(IMG.endswith(payload))
        self.assertTrue(out.endswith(OK))


class TestRainMaker(unittest.TestCase):
    def test_fetch_notify_result(self):
        h = Host(echo=False, fetch_notify_ms=50)
        h.sim.push_job(PATH, len(IMG), None, "J1", passive=False)
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",1,"x"'), ERROR)  # not pending yet
        out = h.cmd(b"AT+RMOTAFETCH", 250)  # 1,100 bytes take 95 ms at 115200 baud
        self.assertTrue(out.startswith(OK + b"+RMFWNOTIFY:0,9000,https://"), out)
        self.assertTrue(out.endswith(b",null,J1\r\n"), out)
        self.assertEqual(len(out) - len(OK), len(b"+RMFWNOTIFY:0,9000,,null,J1\r\n") + 1083)
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",1,"downloading"'), OK)
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",6,"x"'), ERROR)
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",2,"done"'), OK)
        self.assertIsNone(h.sim.job)
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",2,"done"'), ERROR)  # no job pending
        self.assertEqual(h.sim.results, [("J1", 1, "downloading"), ("J1", 2, "done")])

    def test_fetch_notification_first(self):
        h = Host(echo=False, fetch_notify_first=True)
        h.sim.push_job(PATH, len(IMG), "2.0.0", "J1", passive=False)
        out = h.cmd(b"AT+RMOTAFETCH", 200)
        self.assertTrue(out.startswith(b"+RMFWNOTIFY:0,9000,") and out.endswith(OK), out)

    def test_passive_notification_and_fresh_urls(self):
        h = Host(echo=False)
        h.sim.push_job(PATH, len(IMG), "2.0.0", "J1")
        a = h.run(200)
        b = h.cmd(b"AT+RMOTAFETCH", 250)
        self.assertTrue(a.startswith(b"+RMFWNOTIFY:0,9000,"))
        self.assertIn(b"X-Amz-Date=1&", a)
        self.assertIn(b"X-Amz-Date=2&", b)

    def test_reboot_forgets_ram(self):
        h = Host(reset_ms=300, wifi_ms=200, cloud_ms=300)
        h.quiet()
        h.sim.push_job(PATH, len(IMG), "2.0.0", "J1", passive=False)
        h.cmd(b"AT+RMOTAFETCH", 250)
        h.set_url("https://b/fw/app.img")
        h.sim.reboot()
        self.assertEqual(h.cmd(b"AT", 100), b"")  # lost while it restarts
        out = h.run(300)
        self.assertEqual(out, READY)
        out = h.run(600)
        self.assertEqual(out, b"WIFI CONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n")
        self.assertEqual(h.cmd(b"AT"), b"AT\r\n" + OK)  # echo on again
        self.assertEqual(h.cmd(b'AT+HTTPCGET=""', 100), b'AT+HTTPCGET=""\r\n' + ERROR)  # no URL
        self.assertEqual(
            h.cmd(b'AT+RMOTARESULT=0,"J1",2,"x"'), b'AT+RMOTARESULT=0,"J1",2,"x"\r\n' + ERROR
        )
        h.cmd(b"AT+RMOTAFETCH", 250)  # the notification re-arms the pending flag
        self.assertTrue(h.cmd(b'AT+RMOTARESULT=0,"J1",2,"x"').endswith(OK))

    def test_rst(self):
        h = Host(echo=False)
        self.assertEqual(h.cmd(b"AT+RST", 5), OK)
        self.assertEqual(h.run(400), READY)
        self.assertEqual(h.sim.boots, 1)

    def test_cloud_down_refuses_fetch_and_result(self):
        h = Host(echo=False)
        h.sim.push_job(PATH, len(IMG), "2.0.0", "J1", passive=False)
        h.cmd(b"AT+RMOTAFETCH", 250)
        h.sim.set_connected(cloud=False)
        self.assertEqual(h.run(5), b"+RMDISCONNECTED\r\n")
        self.assertEqual(h.cmd(b"AT+RMOTAFETCH"), ERROR)
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",2,"x"'), ERROR)
        h.sim.set_connected(cloud=True)
        self.assertEqual(h.run(5), b"+RMCONNECTED\r\n")
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",2,"x"'), OK)


class TestFaults(unittest.TestCase):
    def _get(self, h, rx=2048):
        h.set_url("https://b/fw/app.img")
        return h.cmd(b'AT+HTTPCGET="",2048,%d,5000' % rx, 3000)

    def test_flip_drop_dup_in_the_body(self):
        h = Host(echo=False, faults=Faults(1, flip_body_at=[100], flip_mask=0x01))
        payload, _, rest = records(self._get(h))
        self.assertEqual(payload[100], IMG[100] ^ 1)
        self.assertEqual(payload[:100] + payload[101:], IMG[:100] + IMG[101:])
        h = Host(echo=False, faults=Faults(1, drop_body_at=[100]))
        with self.assertRaises(AssertionError):  # the record is one byte short
            records(self._get(h))
        h = Host(echo=False, faults=Faults(1, dup_body_at=[100]))
        out = self._get(h)
        self.assertEqual(len(out), len(self._get(Host(echo=False))) + 1)
        self.assertEqual(h.sim.faults.log, [("dup", h.sim.faults.log[0][1])])

    def test_wire_offset_faults(self):
        h = Host(echo=False, faults=Faults(1, drop_at=[2]))
        self.assertEqual(h.cmd(b"AT"), b"\r\nK\r\n")

    def test_probabilistic_faults_have_a_budget(self):
        h = Host(echo=False, faults=Faults(5, flip_prob=0.5, prob_budget=3, prob_scope="payload"))
        payload, _, rest = records(self._get(h))
        self.assertEqual(sum(1 for i in range(len(IMG)) if payload[i] != IMG[i]), 3)
        self.assertEqual(rest, OK)

    def test_truncated_body_ends_ok_or_error(self):
        h = Host(echo=False, faults=Faults(1, truncate_body_at=5000))
        payload, _, rest = records(self._get(h))
        self.assertEqual((payload, rest), (IMG[:5000], OK))
        h = Host(echo=False, faults=Faults(1, truncate_body_at=5000, truncate_final=None))
        payload, _, rest = records(self._get(h))
        self.assertEqual((payload, rest), (IMG[:5000], ERROR))

    def test_reboot_mid_record(self):
        h = Host(echo=False, faults=Faults(1, reboot_at_body=3000))
        out = self._get(h, rx=4096)
        i = out.index(b"+HTTPCGET:")
        self.assertTrue(out.endswith(READY + b"WIFI CONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n"))
        self.assertEqual(h.sim.boots, 1)
        self.assertIn(("reboot_at_body", 3000), h.sim.faults.log)
        self.assertGreater(i, -1)

    def test_reboot_at_a_time(self):
        h = Host(echo=False)
        h.sim.schedule_reboot(50)
        self.assertEqual(h.run(400), READY)

    def test_esp_stall_mid_record_then_rest(self):
        h = Host(echo=False, faults=Faults(1, stall_at_body=4000, stall_ms=3000))
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        a = h.run(2000)
        b = h.run(3000)
        payload, _, rest = records(a + b)
        self.assertEqual((payload, rest), (IMG, OK))
        self.assertFalse(a.endswith(b"\r\n"))  # stopped inside a record

    def test_silence_then_idle_without_final(self):
        h = Host(echo=False, faults=Faults(1, silence_at_body=4000, silence_ms=2000))
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        out = h.run(1500)
        h.send(b"AT\r\n")  # refused; the answer waits for the record being written
        self.assertEqual(h.run(200), b"")
        self.assertEqual(h.run(2000), BUSY)
        self.assertEqual(h.cmd(b"AT"), OK)
        self.assertNotIn(OK, out)

    def test_wifi_drop_mid_download(self):
        h = Host(echo=False, faults=Faults(1, wifi_drop_at_body=3000, wifi_down_ms=1000))
        h.quiet()
        out = self._get(h)
        payload, _, rest = records(out)
        self.assertTrue(3000 <= len(payload) < len(IMG))
        self.assertTrue(rest.startswith(b"WIFI DISCONNECT\r\n+RMDISCONNECTED\r\n"), rest)
        self.assertIn(b"ERR CODE:0x010a7000\r\n" + ERROR, rest)
        self.assertTrue(rest.endswith(b"WIFI CONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n"), rest)

    def test_outage_at_a_time(self):
        h = Host(echo=False)
        h.sim.schedule_outage(10, 500, wifi=False)
        self.assertEqual(h.run(600), b"+RMDISCONNECTED\r\n+RMCONNECTED\r\n")

    def test_slow_server(self):
        h = Host(echo=False, baud=None)
        h.sim.server.rate_bps = 3000
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        self.assertFalse(h.run(2900).endswith(OK))
        self.assertTrue(h.run(200).endswith(OK))

    def test_server_stall_short_and_long(self):
        h = Host(echo=False, baud=None)
        h.sim.server.stall_at, h.sim.server.stall_ms = 4000, 3000
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET="",2048,2048,5000\r\n')
        a = h.run(2000)
        payload, _, rest = records(a + h.run(2000))
        self.assertEqual((payload, rest), (IMG, OK))
        # the record that reaches the pause waits for all its bytes (espat_emu alike)
        self.assertTrue(0 < len(records(a)[0]) <= 4000)
        h.sim.server.stall_at, h.sim.server.stall_ms = 4000, None
        h.quiet()
        h.send(b'AT+HTTPCGET="",2048,2048,5000\r\n')
        payload, _, rest = records(h.run(5500))
        self.assertEqual((payload, rest), (IMG[:4000], b"ERR CODE:0x010a7000\r\n" + ERROR))

    def test_url_expiry_and_fresh_url(self):
        h = Host(echo=False)
        h.quiet()
        h.sim.server.expire_ms = 1000
        h.sim.push_job(PATH, len(IMG), "2.0.0", "J1", passive=False)
        out = h.cmd(b"AT+RMOTAFETCH", 250)
        url = out[out.index(b"https://") : out.rindex(b",2.0.0,J1")]
        h.set_url(url)
        self.assertTrue(h.cmd(b'AT+HTTPCGET=""', 2000).endswith(OK))
        h.run(1000)
        self.assertTrue(h.cmd(b'AT+HTTPCGET=""', 2000).endswith(b"0x010a7193\r\n" + ERROR))
        out = h.cmd(b"AT+RMOTAFETCH", 250)
        h.set_url(out[out.index(b"https://") : out.rindex(b",2.0.0,J1")])
        self.assertTrue(h.cmd(b'AT+HTTPCGET=""', 2000).endswith(OK))

    def test_short_record_and_mangled_final(self):
        h = Host(echo=False, faults=Faults(1, short_record={0: 8}, mangle_final=b"\r\nO\r\n"))
        out = self._get(h)
        n = int(out[10 : out.index(b",")])
        self.assertTrue(out.endswith(b"\r\nO\r\n"))
        self.assertEqual(out[out.index(b",") + 1 + n - 8 : out.index(b",") + 1 + n - 6], b"\r\n")

    def test_busy_next_and_busy_then_run(self):
        h = Host(echo=False, faults=Faults(1, busy_next=2))
        self.assertEqual(h.cmd(b"AT"), BUSY)
        self.assertEqual(h.cmd(b"AT"), BUSY)
        self.assertEqual(h.cmd(b"AT"), OK)
        h = Host(echo=False, faults=Faults(1, busy_next=1, busy_then_run_ms=100))
        self.assertEqual(h.cmd(b"AT+HTTPURLCFG=8", 50), BUSY)
        self.assertEqual(h.run(100), PROMPT)

    def test_lose_url_byte(self):
        h = Host(echo=False, faults=Faults(1, lose_url_byte=3))
        self.assertEqual(h.cmd(b"AT+HTTPURLCFG=8"), PROMPT)
        h.send(b"http://x")
        self.assertEqual(h.run(100), b"")  # one byte short: still waiting
        h.send(b"y")
        self.assertEqual(h.run(10), SET_OK)
        self.assertEqual(h.sim.url, b"htt://xy")  # the "p" was lost

    def test_refused_result(self):
        h = Host(echo=False, faults=Faults(1, refuse_result=1, refuse_result_ms=500))
        h.sim.push_job(PATH, len(IMG), "2.0.0", "J1", passive=False)
        h.cmd(b"AT+RMOTAFETCH", 250)
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",1,"x"'), OK)  # 1 is not refused
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",2,"x"'), b"+RMDISCONNECTED\r\n" + ERROR)
        self.assertEqual(h.run(600), b"+RMCONNECTED\r\n")
        self.assertEqual(h.cmd(b'AT+RMOTARESULT=0,"J1",2,"x"'), OK)

    def test_host_busy_overflows_the_receive_buffer(self):
        h = Host(echo=False, rx_fifo=4096)
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        h.run(100)
        h.sim.host_busy(100)  # 100 ms at 11.5 bytes/ms fits in 4 KB
        self.assertEqual(h.sim.overflows, 0)
        h.sim.host_busy(100, fifo=32)  # interrupts off: only the 32-byte FIFO
        self.assertGreater(h.sim.overflows, 1000)
        with self.assertRaises(AssertionError):
            records(h.run(1000))

    def test_rts_cts_pauses_the_esp(self):
        h = Host(echo=False, rx_fifo=4096, host_cts=True)
        self.assertEqual(h.cmd(b"AT+UART_CUR=115200,8,1,0,3"), OK)
        h.set_url("https://b/fw/app.img")
        h.send(b'AT+HTTPCGET=""\r\n')
        out = h.run(100)
        h.sim.host_busy(300, fifo=32)
        out += h.run(1500)
        self.assertEqual(h.sim.overflows, 0)
        payload, _, rest = records(out)
        self.assertEqual((payload, rest), (IMG, OK))
        h.sim.reboot()  # AT+UART_CUR is forgotten
        h.run(1000)
        self.assertEqual(
            h.cmd(b"AT+UART_CUR?"), b"AT+UART_CUR?\r\n+UART_CUR:115200,8,1,0,1\r\n" + OK
        )

    def test_same_seed_same_bytes(self):
        a = self._get(Host(echo=False, seed=9))
        b = self._get(Host(echo=False, seed=9))
        c = self._get(Host(echo=False, seed=10))
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)


if __name__ == "__main__":
    unittest.main()
