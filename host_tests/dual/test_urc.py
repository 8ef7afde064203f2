"""+RMFWNOTIFY / +RMOTA parsers and ESP-AT error codes."""

import unittest

import tracefmt
from rmota.errors import ProtocolError, describe_err_code, http_status_of
from rmota.urc import fwnotify_job_id, parse_fwnotify, parse_rmota


def _seed_line():
    with open(tracefmt.TRACES + "/../../tools/data/seed_rmfwnotify.txt", "rb") as f:
        return f.read().strip()


class TestFWNotify(unittest.TestCase):
    def test_seed(self):
        n = parse_fwnotify(_seed_line())
        self.assertEqual(n.type, 0)
        self.assertEqual(n.size, 1740880)
        self.assertEqual(len(n.url), 1083)
        self.assertTrue(n.url.startswith(b"https://esp-rainmaker-ota-"))
        self.assertEqual(n.fw_version, "d486921-dirty")
        self.assertEqual(n.job_id, "tP8HKQDLM7ToThwNScgrLR")

    def test_commas_in_url_and_null_version(self):
        n = parse_fwnotify(b"+RMFWNOTIFY:0,76,https://h/p?a=1,2,3&b=,,null,JOB1")
        self.assertEqual(n.url, b"https://h/p?a=1,2,3&b=,")
        self.assertIsNone(n.fw_version)
        self.assertEqual(n.job_id, "JOB1")
        self.assertEqual(n.size, 76)

    def test_malformed(self):
        for bad in (
            b"+RMFWNOTIFY:0,76,url,ver",
            b"+RMFWNOTIFY:x,76,url,ver,job",
            b"+RMFWNOTIFY:0,-1,url,ver,job",
            b"+RMFWNOTIFY:0,0,url,ver,job",
            b"+RMFWNOTIFY:0,99999999999,url,ver,job",
            b"+RMFWNOTIFY:0,76,,ver,job",
            b"+RMFWNOTIFY:0,76,url,ver,",
            b'+RMFWNOTIFY:0,76,url,ver,jo"b',
            b"+RMFWNOTIFY",
            b"+RMFWNOTIFY:0,76,https://h/p\xff?q,1.0,JOB1",  # a flipped bit in the URL
            b"+RMFWNOTIFY:0,76,https://h/p q,1.0,JOB1",
            b"+RMFWNOTIFY:0,76,https://h/p,1.\x80,JOB1",
            b"+RMFWNOTIFY:0,76,https://h/p,1.0,J\xc3\xa9",
        ):
            with self.assertRaises(ProtocolError):
                parse_fwnotify(bad)

    def test_job_id_of_a_refused_line(self):
        # (the job id of a line refused for another field, to report it 5)
        self.assertEqual(fwnotify_job_id(b"+RMFWNOTIFY:0,0,https://h/a,b,1.0,JOB-7"), "JOB-7")
        self.assertEqual(fwnotify_job_id(b"+RMFWNOTIFY:0,9,https://h/\xc3\xa9,1.0,J1"), "J1")
        for line in (
            b"+RMFWNOTIFY:0,0,u,1.0,",  # empty
            b'+RMFWNOTIFY:0,0,u,1.0,J"1',  # a quote
            b"+RMFWNOTIFY:0,0,u,1.0,J\xc3\xa9",  # not ASCII
            b"+RMFWNOTIFY:0,0,J1",  # too few fields to tell
            b"+RMOTA:0,0,u,1.0,J1",
        ):
            self.assertIsNone(fwnotify_job_id(line), line)


class TestRMOTA(unittest.TestCase):
    def test_values(self):
        for k in (1, 2, 3, 4, 5, 9):
            self.assertEqual(parse_rmota(b"+RMOTA:%d" % k), k)
        with self.assertRaises(ProtocolError):
            parse_rmota(b"+RMOTA:x")
        with self.assertRaises(ProtocolError):
            parse_rmota(b"+RMOTA:")


class TestErrCode(unittest.TestCase):
    def test_http_status(self):
        self.assertEqual(http_status_of(0x010A7193), 403)
        self.assertEqual(http_status_of(0x010A71A0), 416)
        self.assertEqual(http_status_of(0x010A7194), 404)
        self.assertEqual(http_status_of(0x010A7000), 0)
        self.assertIsNone(http_status_of(0x010B0000))
        self.assertIsNone(http_status_of(None))
        self.assertEqual(describe_err_code(0x010A7193), "HTTP 403")
        self.assertEqual(describe_err_code(0x010A7000), "HTTP connection failed")
        self.assertEqual(describe_err_code(0x010B0000), "ERR CODE 0x010b0000")
