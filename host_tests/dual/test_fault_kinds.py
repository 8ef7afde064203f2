"""One deterministic fault-campaign scenario per fault kind (issue 3): the agent updates the
unix board in-process on a virtual clock through tools/espsim.py with that one fault, and
every invariant of tools/faultrun.py holds (no brick, no unverified commit, the truthful
final status, no unhandled exception). Runs under CPython (pytest) and MicroPython
(mp_run.py). A failing case is replayed with ``faultrun.py`` as its message says."""

import sys
import unittest

_d = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
if _d + "/../../tools" not in sys.path:
    sys.path.append(_d + "/../../tools")

import faultrun  # noqa: E402

SIZE = 9000  # payload bytes: three erase blocks


class FaultKinds(unittest.TestCase):
    def setUp(self):
        self.flash = faultrun.Flash()

    def tearDown(self):
        self.flash.remove()

    def scenario(self, seed, kinds, faults, cuts=(), size=SIZE, expect=None, settings=None):
        sc = faultrun.make_scenario(seed, size=size, kinds=kinds, cuts=list(cuts), faults=faults)
        if settings:
            sc["settings"] = settings
        if expect is not None:
            self.assertEqual(sc["expect"], expect)
        return self.scenario_run(sc)

    def scenario_run(self, sc):
        sn = faultrun.Scenario(sc, self.flash)
        r = sn.run()
        self.assertEqual(r["violations"], [], "%s: %s" % (sc["cuts"], r.get("log_tail")))
        self.assertEqual(r["final"], sc["expect"])
        return r, sn

    def scenario_patterned(self, sc, spans):
        # self.scenario_run(sc) with image bytes that repeat ``pattern`` over ``length``
        # bytes from ``start``, for each (start, length, pattern) of ``spans``.
        orig = faultrun.payload_bytes

        def patterned(n, seed):
            b = bytearray(orig(n, seed))
            for a, ln, p in spans:
                for i in range(a, min(n, a + ln)):
                    b[i] = p[(i - a) % len(p)]
            return bytes(b)

        faultrun.payload_bytes = patterned
        try:
            return self.scenario_run(sc)
        finally:
            faultrun.payload_bytes = orig

    def scenario_spelling(self, word, every, *args, **kw):
        # self.scenario() with image bytes that spell `word` every `every` bytes.
        orig = faultrun.payload_bytes

        def spelled(n, seed):
            b = bytearray(orig(n, seed))
            for a in range(0, n - len(word), every):
                b[a : a + len(word)] = word
            return bytes(b)

        faultrun.payload_bytes = spelled
        try:
            return self.scenario(*args, **kw)
        finally:
            faultrun.payload_bytes = orig

    def fired(self, sn, name):
        return [x for x in sn.sim.faults.log if x[0] == name]

    def statuses(self, sn):
        return [q["status"] for q in sn.sim.server.requests]

    # --- bytes on the wire ----------------------------------------------------------
    def test_dropped_byte_in_a_record(self):
        r, sn = self.scenario(1, ["drop"], {"drop_body_at": [5000]})
        self.assertTrue(self.fired(sn, "drop"))
        self.assertGreaterEqual(r["requests"], 2)

    def test_a_lost_record_costs_only_its_hole(self):
        # A byte dropped or doubled mid-image: the records after the damaged one are
        # written ahead, and the second request asks for the hole alone (bounded Range),
        # at most one erase block plus one record (issue 3).
        bound = 4096 + 10240 + 64
        for kind, key, at in (("drop", "drop_body_at", 50000), ("dup", "dup_body_at", 70000)):
            r, sn = self.scenario(11, [kind], {key: [at]}, size=120000)
            q = sn.sim.server.requests
            self.assertEqual(len(q), 3, q)  # the header, the image, the hole
            self.assertEqual(q[0]["sent"], 64)
            self.assertLess(q[2]["start"], at)
            self.assertLessEqual(q[2]["sent"], bound)
            # The hole's request ends where the bytes kept begin, not at the end of
            # their block: those before the first block ahead wait in flash (the lead).
            kept = [x for x in sn.log if "keeping the bytes after a hole at" in x]
            self.assertEqual(len(kept), 1, kept)
            self.assertEqual(q[2]["start"] + q[2]["sent"], int(kept[0].rsplit("..", 1)[1]))
            self.assertTrue(0 < max(r["refetch"]) <= bound, r["refetch"])
            self.assertEqual(r["full_restarts"], 0)

    def test_a_torn_journal_entry_while_the_hole_is_filled(self):
        # A power cut tears the 4-byte CRC entry of a block: the entry matches no
        # block, so the resume stops before it, and the blocks written ahead of the
        # hole (after absent entries, or right after the torn one when the hole was
        # just filled up to them) keep theirs. They used to go with it: the rest of the
        # image was fetched again (MicroPython campaign seed 1806: 33 KB).
        bound = 4096 + 10240 + 64
        f = {"dup_body_at": [11143]}
        ops = []
        sc = faultrun.make_scenario(1806, size=37457, kinds=["dup"], cuts=[], faults=f)
        faultrun.Scenario(sc, self.flash, op_log=ops).run()
        entries = [g for g in range(len(ops)) if ops[g] == ("program", 4)]
        self.assertGreater(len(entries), 10)
        kept_after_cut = 0
        for g in entries:
            sc = faultrun.make_scenario(
                1806, size=37457, kinds=["dup"], cuts=[["op", g, 2]], faults=f
            )
            r, sn = self.scenario_run(sc)
            self.assertEqual(r["cuts_fired"], 1, g)
            self.assertTrue(max(r["refetch"] or [0]) <= bound, (g, r["refetch"]))
            if any("written ahead of a hole" in x for x in sn.log):
                kept_after_cut += 1
        self.assertGreater(kept_after_cut, 3)

    def test_a_hole_before_the_overlap_check_then_the_connection_cut(self):
        # The image request's first record loses a byte (a hole before its overlap was
        # checked: the bytes ahead are unverified), then the connection is cut and the
        # ESP ends the download with OK (firmware before Aug 2025). The response ended
        # short, neither an error page nor the whole file: the bytes ahead are checked
        # with 16 of the file's bytes and kept (campaign seed 155, before the kind
        # damaged_header was added: they used to be dropped, 30 KB fetched again).
        f = {"dup_body_at": [2000], "truncate_body_at": 30194, "truncate_final": "OK"}
        r, sn = self.scenario(155, ["dup", "truncate"], f, size=40586)
        self.assertTrue(any("bytes after the hole kept unconfirmed" in x for x in sn.log))
        self.assertFalse(any("unverified: dropped" in x for x in sn.log))
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch_requests"]) <= 4096 + 10240 + 64, r["refetch_requests"])

    def test_a_power_cut_while_a_hole_is_open(self):
        # The blocks written ahead are in the journal's raw CRC log: after the cut the
        # agent keeps them and still fetches only the hole.
        bound = 4096 + 10240 + 64
        for t in (7000, 9500):
            r, sn = self.scenario(
                13, ["drop"], {"drop_body_at": [50000]}, cuts=[["t", t, 500]], size=120000
            )
            self.assertEqual(r["cuts_fired"], 1)
            self.assertTrue(any("written ahead of a hole" in x for x in sn.log), t)
            self.assertTrue(max(r["refetch"]) <= bound, r["refetch"])
            self.assertEqual(r["full_restarts"], 0)

    def test_a_power_cut_right_after_the_lead_keeps_it(self):
        # The bytes from the lost record's end to the next block (the lead) are
        # programmed at the start of their block and journalled (a joint entry in the
        # CRC log). Cut every flash operation from just before the hole to several blocks
        # after it: when no block after the lead was programmed yet, the resume keeps
        # the lead alone, checks 16 of the file's bytes at its offset, and the hole's
        # request ends right there, not at the block's end.
        # (The runtimes' littlefs make different numbers of flash operations: the first
        # cut after which anything is kept ahead is looked for in steps of 3, then every
        # operation from just before it on is cut.)
        bound = 4096 + 10240 + 64
        alone = 0

        def run(op):
            r, sn = self.scenario(
                11, ["drop"], {"drop_body_at": [50000]}, cuts=[["op", op, None]], size=120000
            )
            self.assertEqual(r["cuts_fired"], 1, op)
            self.assertTrue(max(r["refetch"]) <= bound, (op, r["refetch"]))
            self.assertEqual(r["full_restarts"], 0)
            kept = [int(x.split("kept ")[1].split()[0]) for x in sn.log if "ahead of a hole" in x]
            return r, sn, kept

        first = 30
        while not run(first)[2]:
            first += 3
            self.assertLess(first, 200)
        for op in range(first - 3, first + 12):
            r, sn, kept = run(op)
            if kept and kept[0] < 4096:
                alone += 1
                self.assertTrue(any("bytes ahead of the hole checked" in x for x in sn.log))
                q = sn.sim.server.requests
                k = [i for i, x in enumerate(q) if x["sent"] == 16][-1]
                joint = q[k]["start"]  # the 16-byte check at the lead's offset
                self.assertEqual(joint % 4096, (4096 - kept[0] + 64) % 4096)
                self.assertEqual(q[k + 1]["start"] + q[k + 1]["sent"], joint, op)
        self.assertGreater(alone, 0)

    def test_blocks_ahead_misplaced_by_a_lying_header_then_a_power_cut(self):
        # A record header claims one byte more than it holds (so the blocks ahead sit one
        # byte off) and the power goes before the end of the response could tell: the
        # resume keeps them unconfirmed, 16 of the file's bytes fetched before the hole
        # are found one byte further on in the slot, the blocks are moved there, and
        # the job ends 2 with nothing over the bound (a misplaced block kept across a
        # power cut was found by an adversarial run).
        r, sn = self.scenario(
            5, ["short_record"], {"short_record": [3, 1]}, cuts=[["t", 5000, 500]], size=80000
        )
        # five blocks and the lead before them (22,530..24,576)
        self.assertTrue(any("kept 22526 B written ahead" in x for x in sn.log))
        self.assertTrue(any("bytes after the hole moved by -1 B" in x for x in sn.log))
        self.assertEqual(r["statuses"], [1, 1, 2])
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])
        q = sn.sim.server.requests
        self.assertEqual(q[2]["end"] - q[2]["start"], 15)  # the check: 16 bytes

    def test_two_lost_records_in_one_attempt(self):
        # Two holes, each fetched alone, each within the bound. The response ended in
        # place, but with two holes two lengths off either way could cancel out: each
        # run is checked (16 bytes) before its hole is fetched.
        r, sn = self.scenario(12, ["drop"], {"drop_body_at": [30000, 90000]}, size=120000)
        self.assertEqual(len(self.fired(sn, "drop")), 2)
        q = sn.sim.server.requests
        self.assertEqual(len(q), 6)  # header, image, then a check and a hole, twice
        self.assertEqual([x["sent"] for x in q[2::2]], [16, 16])
        self.assertTrue(q[2]["start"] > q[3]["end"] and q[4]["start"] > q[5]["end"])
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])
        self.assertEqual(r["full_restarts"], 0)

    def test_a_power_cut_with_two_holes_open_keeps_both_runs(self):
        # Two records lost in one response, then the power goes before the holes are
        # fetched: the journal's entries form two runs after two holes, and the resume
        # keeps both (it used to keep the first only: 15-19 KB per interruption).
        bound = 4096 + 10240 + 64
        for t in (11000, 11500):
            r, sn = self.scenario(
                12,
                ["drop"],
                {"drop_body_at": [30000, 90000]},
                cuts=[["t", t, 1000]],
                size=120000,
            )
            self.assertEqual(r["cuts_fired"], 1)
            # both runs, and the lead before the first: 34,460 to the end (120,000)
            # less the second hole's 10,147 B
            self.assertTrue(any("kept 75393 B written ahead" in x for x in sn.log), t)
            self.assertTrue(max(r["refetch"]) <= bound, (t, r["refetch"]))
            self.assertEqual(r["full_restarts"], 0)

    def test_a_power_cut_with_a_hole_open_keeps_the_block_before_it(self):
        # A record lost at 25,768 B of the payload (stream 25,832), then the power goes
        # while the response still runs (6 s) or after it ended (11 s, while the hole is
        # fetched): the whole pages of block 6 before the hole (24,576..25,600), parked
        # and journalled when the hole opened, are taken back, so the resume and the
        # hole's request start a page at most before the hole (25,664; 16 B of overlap
        # before it), not at the block's start (24,640), and end where the lead begins.
        for t in (6000, 11000):
            r, sn = self.scenario(
                12, ["drop"], {"drop_body_at": [30000]}, cuts=[["t", t, 1000]], size=120000
            )
            self.assertEqual(r["cuts_fired"], 1)
            self.assertTrue(any("resuming job" in x and " at 25664 " in x for x in sn.log), t)
            q = [(x["range"], x["sent"]) for x in sn.sim.server.requests]
            self.assertIn((25648, 8876), q)  # from the parked pages to the lead
            if t == 11000:
                self.assertIn((25816, 8708), q)  # the hole's request the cut stopped
            self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, (t, r["refetch"]))
            self.assertEqual(r["full_restarts"], 0)

    def test_a_hole_with_pre_erase(self):
        # pre_erase must not erase the blocks written ahead before the hole is fetched
        for st in ({"flash_mode": "pre_erase"}, {"flash_mode": "pre_erase", "erase_unit": 32768}):
            r, sn = self.scenario(
                14, ["drop"], {"drop_body_at": [50000]}, size=120000, settings=st
            )
            self.assertEqual(len(sn.sim.server.requests), 3, st)  # header, image, hole
            self.assertEqual(r["full_restarts"], 0, st)

    def test_a_hole_with_erase_units(self):
        # 8 KB erase units: the unit erased for the block being written must not take the
        # lead's block with it (it did: a digest failure, a full restart of 40 KB).
        sc = {
            "seed": 1,
            "size": 40000,
            "kinds": ["drop"],
            "faults": {"drop_body_at": [13000]},
            "cuts": [],
            "expect": 2,
            "sim_seed": 5,
            "settings": {"erase_unit": 8192, "rx_size": 2048},
        }
        r, sn = self.scenario_run(sc)
        self.assertEqual(r["full_restarts"], 0)
        self.assertEqual(len(sn.sim.server.requests), 3)  # header, image, hole
        self.assertTrue(max(r["refetch"]) <= 8192 + 2048 + 64, r["refetch"])

    def test_an_http_error_instead_of_the_hole_keeps_the_blocks_ahead(self):
        # The hole's first request gets an error page (HTTP 500): the blocks written
        # ahead stay, the hole alone is asked for again.
        f = {"drop_body_at": [50000], "fail_next": [None, None, 500]}
        r, sn = self.scenario(15, ["drop", "http_error"], f, size=120000)
        q = sn.sim.server.requests
        self.assertEqual([x["status"] for x in q], [206, 206, 500, 206], q)
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])
        self.assertEqual(r["full_restarts"], 0)

    def test_a_host_power_cut_right_after_a_prompt(self):
        # The ESP waits for a whole URL after ">" when the host comes back: the NULs that
        # end it must be as long as a URL can be (found by an adversarial run).
        sc = {
            "seed": 930812,
            "size": 120000,
            "kinds": ["flip"],
            "faults": {"flip_body_at": [51351, 60715, 93837]},
            "cuts": [["t", 11302, 819]],
            "expect": 2,
            "sim_seed": 535321716,
            "settings": {"erase_unit": 32768},
        }
        r = faultrun.Scenario(sc, self.flash).run()
        self.assertEqual((r["violations"], r["unhandled"], r["final"]), ([], 0, 2))

    def test_a_slow_line_is_not_a_stalled_download(self):
        # 9600 baud: a 10240-byte record takes 10.7 s, longer than the network timeout
        sc = faultrun.make_scenario(1, size=40000, kinds=[], cuts=[], faults={})
        sc["settings"] = {"baud": 9600, "faithful": True}
        sn = faultrun.Scenario(sc, self.flash)
        r = sn.run()
        # (two requests: the 64-byte header, then the image)
        self.assertEqual((r["violations"], r["statuses"], r["requests"]), ([], [1, 2], 2))

    def test_dropped_byte_anywhere_on_the_wire(self):
        for off in (3, 40, 700, 1500):
            r, sn = self.scenario(2, ["drop"], {"drop_at": [off]})
            self.assertTrue(self.fired(sn, "drop"), off)

    def test_duplicated_byte(self):
        r, sn = self.scenario(3, ["dup"], {"dup_body_at": [4000]})
        self.assertTrue(self.fired(sn, "dup"))

    def test_flipped_byte_caught_by_the_digest(self):
        r, sn = self.scenario(4, ["flip"], {"flip_body_at": [6000]})
        self.assertTrue(self.fired(sn, "flip"))
        self.assertEqual(r["full_restarts"], 1)

    def test_flipped_byte_in_window_mode_is_a_full_restart(self):
        # Window mode keeps no holes, so the download starting over after a digest
        # failure begins with the first window: the campaign counts it as a full
        # restart, not as 12 KB and more fetched again for one interruption.
        st = {"flash_mode": "window"}
        r, sn = self.scenario(4, ["flip"], {"flip_body_at": [6000]}, size=30000, settings=st)
        self.assertTrue(self.fired(sn, "flip"))
        q = sn.sim.server.requests
        self.assertEqual([x["start"] for x in q if x["start"] == 0], [0, 0])
        self.assertEqual((r["full_restarts"], r["refetch"]), (1, []))

    def test_flipped_byte_in_the_header_digest_that_a_resume_asks_for_again(self):
        # A byte of the header's last 16 (its digest field) altered once on the wire:
        # the header passes its checks and is journalled, and a resume with nothing of
        # the payload held asks for those 16 bytes again as its overlap, which never
        # matched: every attempt failed and the job ended 3 on every notification. The
        # header is dropped with the overlap now, and taken afresh.
        for st in ({}, {"flash_mode": "pre_erase"}, {"faithful": True, "baud": 921600}):
            for k in (48, 63):
                r, sn = self.scenario(7, ["flip"], {"flip_body_at": [k]}, settings=st)
                self.assertEqual(len(self.fired(sn, "flip")), 1, st)
                self.assertEqual(r["full_restarts"], 1, (st, k))

    def test_flipped_byte_in_a_notification(self):
        r, sn = self.scenario(5, ["flip"], {"flip_at": [60]})
        self.assertTrue(self.fired(sn, "flip"))

    # --- the download ---------------------------------------------------------------
    def test_payload_cut_short_then_ok(self):
        r, sn = self.scenario(6, ["truncate"], {"truncate_body_at": 5000, "truncate_final": "OK"})
        self.assertTrue(self.fired(sn, "truncate_body"))

    def test_payload_cut_short_then_error(self):
        r, sn = self.scenario(7, ["truncate"], {"truncate_body_at": 5000, "truncate_final": None})
        self.assertTrue(self.fired(sn, "truncate_body"))

    def test_esp_reboots_at_a_body_byte(self):
        r, sn = self.scenario(8, ["esp_reboot"], {"reboot_at_body": 5000})
        self.assertTrue(self.fired(sn, "reboot_at_body"))
        self.assertEqual(sn.sim.boots, 1)

    def test_esp_reboots_7_bytes_before_a_record_ends(self):
        # "\r\nready" then fills the record exactly and ready's CRLF passes for the
        # record's: the response stops right after a record ending in "\r\nready", so
        # its bytes are dropped before the next attempt (campaign seed 7191: 7 bytes
        # that were not the image's reached the slot, the overlap check caught them, and
        # 26 KB were fetched again).
        import espcore

        lens = []
        orig = espcore.record_header
        espcore.record_header = lambda n: lens.append(n) or orig(n)
        try:
            self.scenario(8, ["esp_reboot"], {"reboot_at_body": 10**9}, size=20000)
        finally:
            espcore.record_header = orig
        end = sum(lens[1:4])  # the end of the image's third record (after the header's)
        r, sn = self.scenario(8, ["esp_reboot"], {"reboot_at_body": end - 7}, size=20000)
        self.assertTrue(self.fired(sn, "reboot_at_body"))
        self.assertTrue(any("the last record ended in ready" in x for x in sn.log))
        self.assertFalse(any("overlap differs" in x for x in sn.log))
        self.assertEqual(r["statuses"], [1, 2])
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])

    def test_an_image_full_of_ready_lines_updates_cleanly(self):
        # Image bytes that spell "\r\nready" every 7 bytes: records end in them, the
        # responses go on, and nothing is dropped or taken for an ESP reset (a rule
        # that resynchronised such records reported sound images 3).
        r, sn = self.scenario_spelling(
            b"\r\nready", 7, 3, ["drop"], {"drop_at": [10**9]}, size=40000
        )
        self.assertEqual((r["statuses"], r["refetch"], r["full_restarts"]), ([1, 2], [], 0))
        self.assertEqual(sn.sim.boots, 0)

    def test_esp_reboots_at_an_instant(self):
        for t in (100, 250, 700):
            r, sn = self.scenario(9, ["esp_reboot"], {"reboot_t": t})
            self.assertEqual(sn.sim.boots, 1, t)

    def test_wifi_drops_mid_download(self):
        r, sn = self.scenario(10, ["wifi_drop"], {"wifi_drop_at_body": 5000, "wifi_down_ms": 8000})
        self.assertTrue(self.fired(sn, "wifi_drop"))

    def test_wifi_drops_at_an_instant(self):
        r, sn = self.scenario(11, ["wifi_drop"], {"wifi_drop_t": [400, 3000]})
        self.assertTrue(self.fired(sn, "wifi_drop"))

    def test_cloud_drops(self):
        r, sn = self.scenario(12, ["cloud_drop"], {"cloud_drop_t": [150, 20000]})
        self.assertTrue(self.fired(sn, "cloud_drop"))
        r, sn = self.scenario(
            12, ["cloud_drop"], {"cloud_drop_at_body": 3000, "cloud_down_ms": 9000}
        )
        self.assertTrue(self.fired(sn, "cloud_drop"))

    def test_http_errors_once(self):
        for st in (403, 404, 416, 500):
            r, sn = self.scenario(13, ["http_error"], {"fail_next": [st]})
            self.assertEqual(self.statuses(sn)[0], st)

    def test_expired_url_is_fetched_again(self):
        r, sn = self.scenario(
            14, ["url_expiry", "esp_reboot"], {"expire_ms": 300, "reboot_at_body": 5000}
        )
        self.assertIn(403, self.statuses(sn))
        self.assertGreaterEqual(r["counters"]["refetches"], 1)

    def test_window_mode_with_a_server_that_ignores_range(self):
        # rp2's flash writes run with the UART interrupt off: only window mode is safe,
        # and it never writes flash while the ESP sends. A server that ignores Range
        # sends the whole file for each window: the agent takes the window's bytes,
        # lets the rest go by unwritten, programs the window once the response ended,
        # and asks again. (It used to program the full window mid-response: bytes lost
        # every time, and the job reported 3.)
        st = {"faithful": True, "flash_mode": "window", "uart_irq_off_fifo": 32}
        size = 3 * 12288 + 1000
        r, sn = self.scenario(9, ["ignore_range"], {"ignore_range": -1}, size=size, settings=st)
        q = sn.sim.server.requests
        self.assertEqual(r["statuses"][-1], 2)
        self.assertEqual(r["uart_overflows"], 0)
        self.assertEqual(len(q), 4)  # one whole file per window
        self.assertTrue(all(x["sent"] == size + 64 for x in q), q)

    def test_window_mode_fetches_the_header_alone_first(self):
        # An image the header refuses (the version running) costs two 64-byte requests
        # (the second look tells a byte altered in transit), not two 12 KB windows.
        r, sn = self.scenario(
            8,
            ["same_version"],
            {"version": 1},
            size=30000,
            expect=5,
            settings={"flash_mode": "window"},
        )
        self.assertEqual([q["sent"] for q in sn.sim.server.requests], [64, 64])
        # A sound image: the header, then windows that each ask again for 16 bytes.
        r, sn = self.scenario(8, [], {}, size=30000, settings={"flash_mode": "window"})
        q = sn.sim.server.requests
        self.assertEqual(
            [(x["range"], x["end"]) for x in q],
            [(0, 63), (48, 12351), (12336, 24639), (24624, 30063)],
        )

    def test_a_window_whose_final_result_came_mangled(self):
        # Every byte of the window came, then "\r\nO\r\n" for OK: the window is kept
        # (the image's SHA-256 still judges the whole) and the next one asked for.
        r, sn = self.scenario(
            8,
            ["mangle_final"],
            {"mangle_final": "\r\nO\r\n"},
            size=30000,
            settings={"flash_mode": "window"},
        )
        self.assertTrue(self.fired(sn, "mangle_final"))
        self.assertTrue(any("no final result after the window's last byte" in x for x in sn.log))
        self.assertEqual(len(sn.sim.server.requests), 4)  # header, three windows
        self.assertEqual(r["refetch"], [])

    def test_a_fresh_url_is_fetched_after_the_back_off(self):
        # The URL lives 700 ms; the first two requests fail (HTTP 500, then a refused
        # URL after a back-off). The fresh URL is asked for after the back-off, right
        # before the request that uses it: it used to be fetched first, then wait out
        # the back-off and expire, and every later attempt was refused.
        r, sn = self.scenario(
            8, ["url_expiry", "http_error"], {"expire_ms": 700, "fail_next": [500]}, size=9000
        )
        st = self.statuses(sn)
        self.assertEqual(st[0], 500)
        self.assertEqual(st.count(403), 1, st)
        self.assertEqual(r["statuses"], [1, 2])

    def test_url_that_expires_after_every_window(self):
        # Window mode: every 12 KB window is a request of its own and the URL lives
        # 400 ms, less than a window takes. Each window after the first is refused
        # (403), AT+RMOTAFETCH brings a fresh URL, and it is used at once: a refusal
        # after progress is not a failed attempt, so the job does not run out of them.
        size = 5 * 12288
        r, sn = self.scenario(
            14, ["url_expiry"], {"expire_ms": 400}, size=size, settings={"flash_mode": "window"}
        )
        st = self.statuses(sn)
        self.assertGreaterEqual(st.count(403), 4, st)
        self.assertEqual(r["statuses"][-1], 2)
        self.assertEqual(r["refetch"], [])  # nothing fetched twice
        self.assertNotIn(3, r["statuses"])
        # A URL that is refused at once, every time, still ends the job (status 3).
        r, sn = self.scenario(
            14,
            ["refused_403"],
            {"fail_always": 403},
            size=size,
            expect=3,
            settings={"flash_mode": "window"},
        )
        self.assertEqual(set(self.statuses(sn)), {403})

    def test_server_ignores_range(self):
        # The dropped byte must fall after the first record (else nothing is held and no
        # Range is asked for); record sizes follow the virtual time of the exchange.
        r, sn = self.scenario(
            15, ["ignore_range", "drop"], {"ignore_range": -1, "drop_body_at": [8000]}
        )
        self.assertTrue(any(q["ignored"] for q in sn.sim.server.requests))

    def test_slow_server(self):
        r, sn = self.scenario(16, ["slow_server"], {"rate_bps": 3000})
        self.assertGreater(r["virtual_ms"], 3000)

    def test_server_stalls_within_the_timeout(self):
        r, sn = self.scenario(
            17, ["server_stall"], {"server_stall_at": 5000, "server_stall_ms": 3000}
        )
        self.assertTrue(self.fired(sn, "server_stall"))
        self.assertEqual(r["requests"], 2)  # the header, then the image

    def test_a_power_cut_at_every_flash_operation_around_a_move(self):
        # The exhaustive idea applied to the recovery of a lying record header: cut the
        # power at every flash operation of an update whose bytes ahead of a hole are
        # found misplaced and moved (erases and programs of the move included); every
        # cut point ends with the new image committed and reported 2.
        for extra in (7, -7):
            f = {"short_record": [2, extra]}
            ops = []
            sc = faultrun.make_scenario(6, size=24000, kinds=["short_record"], cuts=[], faults=f)
            sn = faultrun.Scenario(sc, self.flash, op_log=ops)
            sn.run()
            self.assertTrue(any("bytes after the hole moved by" in x for x in sn.log), extra)
            for g in range(len(ops)):
                cuts = [["op", g, None]]
                sc = faultrun.make_scenario(
                    6, size=24000, kinds=["short_record"], cuts=cuts, faults=f
                )
                r = faultrun.Scenario(sc, self.flash).run()
                self.assertEqual((r["violations"], r["final"]), ([], 2), (extra, g))

    def test_a_power_cut_at_every_flash_operation_around_two_moves(self):
        # The same with two holes in one response whose runs are both misplaced (a
        # lying header, then a damaged one further on): each run is moved alone, the
        # first while the second hole is still open (up by 300 B, then down by 29 B).
        # Every cut point holds.
        kinds = ["damaged_header", "short_record"]
        for dmg, lie, move in (([3, 7, 81], [1, -300], 300), ([4, 7, 81], [1, 29], -29)):
            f = {"damage_record": dmg, "short_record": lie}
            ops = []
            sc = faultrun.make_scenario(6, size=24000, kinds=kinds, cuts=[], faults=f)
            sn = faultrun.Scenario(sc, self.flash, op_log=ops)
            sn.run()
            moved = [x for x in sn.log if "bytes after the hole moved by %d B" % move in x]
            self.assertEqual(len(moved), 2, lie)
            for g in range(len(ops)):
                sc = faultrun.make_scenario(
                    6, size=24000, kinds=kinds, cuts=[["op", g, None]], faults=f
                )
                r = faultrun.Scenario(sc, self.flash).run()
                self.assertEqual((r["violations"], r["final"]), ([], 2), (lie, g))

    def test_a_power_cut_in_the_middle_of_a_long_move(self):
        # The bytes ahead of the hole are 9 blocks or more misplaced (down by 7 B, up by
        # 5000 B, down by 5000 B: a header's first length digit turned into 9); the
        # power goes at each flash operation of their move in turn. The moved blocks and
        # those not moved yet keep their journal entries as two runs, each checked and
        # placed after the restart (down by a block or more, the first bytes of the
        # second run repeat the first run's: they are skipped). No cut costs more than
        # the bound; a cut used to lose every block not moved yet (18-26 KB).
        from rmota import writer

        bound = 4096 + 10240 + 64
        orig = writer.SlotWriter.shift_ahead
        cases = (
            (["short_record"], {"short_record": [1, 7]}, -7, 40000),
            (["short_record"], {"short_record": [1, -5000]}, 5000, 48000),
            (["damaged_header"], {"damage_record": [1, 10, ord("9")]}, -5000, 60000),
        )
        for kinds, f, moved, size in cases:
            span = []

            def shift(w, delta):
                span.append(sn.run_.ops)
                r = orig(w, delta)
                span.append(sn.run_.ops)
                return r

            sc = faultrun.make_scenario(6, size=size, kinds=kinds, cuts=[], faults=f)
            sn = faultrun.Scenario(sc, self.flash)
            writer.SlotWriter.shift_ahead = shift
            try:
                sn.run()
            finally:
                writer.SlotWriter.shift_ahead = orig
            self.assertTrue(any("moved by %d B" % moved in x for x in sn.log), f)
            self.assertEqual(len(span), 2)
            self.assertGreater(span[1] - span[0], 9 * 2, span)  # an erase and a program each
            for g in range(span[0], span[1]):
                sc = faultrun.make_scenario(
                    6, size=size, kinds=kinds, cuts=[["op", g, None]], faults=f
                )
                r = faultrun.Scenario(sc, self.flash).run()
                self.assertEqual((r["violations"], r["final"]), ([], 2), (f, g))
                self.assertLessEqual(max(r["refetch"]), bound, (f, g, r["refetch"]))

    def test_a_header_that_claims_a_block_or_more_fewer_bytes(self):
        # The bytes ahead sit 4100 B too early: more than half of them, so the check
        # looks between in place and where the response ended off (it used to look
        # within half the run each way and drop them: 19 KB fetched again). Moved up by
        # more than a block, the start of the first block ahead is copied to the start
        # of its own block (it used to be fetched again: 16 KB).
        bound = 4096 + 10240 + 64
        for seed, size, idx in ((6, 20000, 1), (5, 60000, 2)):
            r, sn = self.scenario(
                seed, ["short_record"], {"short_record": [idx, -4100]}, size=size
            )
            self.assertTrue(any("bytes after the hole moved by 4100 B" in x for x in sn.log))
            self.assertEqual(len(r["refetch_requests"]), 2)  # the 16-byte check, the hole
            self.assertTrue(max(r["refetch_requests"]) <= bound, r["refetch_requests"])
        # a power cut at each flash operation of the first: every cut point holds
        f = {"short_record": [1, -4100]}
        ops = []
        sc = faultrun.make_scenario(6, size=20000, kinds=["short_record"], cuts=[], faults=f)
        faultrun.Scenario(sc, self.flash, op_log=ops).run()
        self.assertGreater(len(ops), 40)  # (MicroPython's littlefs makes fewer)
        for g in range(len(ops)):
            sc = faultrun.make_scenario(
                6, size=20000, kinds=["short_record"], cuts=[["op", g, None]], faults=f
            )
            r = faultrun.Scenario(sc, self.flash).run()
            self.assertEqual((r["violations"], r["final"]), ([], 2), g)

    def test_a_run_with_repeating_bytes_where_the_window_fits_is_checked_at_its_edge(self):
        # Three records lost, then a power cut before the check: the run kept ahead of
        # the first hole is a block and a parked block (8,192..16,224), 4 KB of it the
        # bytes DE AD BE EF over and over. A window of half the run fits it in one place
        # only, inside those bytes: the check used to drop the run as "too uniform" and
        # fetch the whole image again (found by an adversarial run). It now tries
        # narrower windows, each whole inside the run, with room for places outside them.
        sc = {
            "seed": 51180,
            "size": 30000,
            "kinds": ["drop"],
            "faults": {"drop_body_at": [4465, 20320, 22865]},
            "cuts": [["t", 2700, 1000]],
            "expect": 2,
            "sim_seed": 529062671,
            "settings": {"erase_unit": 8192},
        }
        r, sn = self.scenario_patterned(sc, [(10378, 4096, b"\xde\xad\xbe\xef")])
        self.assertEqual(r["cuts_fired"], 1)
        self.assertTrue(any("kept 11100 B written ahead" in x for x in sn.log), sn.log)
        self.assertTrue(any("bytes ahead of the hole checked" in x for x in sn.log), sn.log)
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch"]) <= 8192 + 10240 + 64, r["refetch"])

    def test_a_misplaced_run_of_repeating_bytes_is_not_taken_for_in_place(self):
        # A header lied by 16 B and three records were lost in a 4.8 KB image whose
        # bytes repeat DE AD BE EF: a check whose window was clipped at the run's edge
        # found the file's 16 bytes "in place" (the pattern repeats every 4 B), kept
        # the run 16 B off, and the SHA-256 failed: a full restart (found by an
        # adversarial run). Windows stay whole inside the run: it is dropped instead.
        sc = {
            "seed": 1119,
            "size": 4857,
            "kinds": ["drop", "short_record"],
            "faults": {"drop_body_at": [586, 1636, 2992], "short_record": [1, -16]},
            "cuts": [],
            "expect": 2,
            "sim_seed": 652433821,
            "settings": {"flash_mode": "pre_erase"},
        }
        spans = [(220, 9000, b"\xde\xad\xbe\xef"), (1623, 64, b"\xff"), (4812, 300, b"\0")]
        r, sn = self.scenario_patterned(sc, spans)
        self.assertFalse(any("SHA-256" in x for x in sn.log), sn.log)
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])

    def test_a_run_of_equal_bytes_does_not_pass_for_in_place(self):
        # Bytes ahead misplaced by 5 where the image holds 40 KB of 0xFF: 16 bytes
        # inside the run would match in place as well as anywhere; the check takes a
        # place whose bytes occur once, finds the shift, and no full restart follows
        # (found by an adversarial run: it used to be "checked", then a digest failure).
        orig = faultrun.payload_bytes

        def padded(n, seed):
            b = bytearray(orig(n, seed))
            b[20000:60000] = b"\xff" * 40000
            return bytes(b)

        faultrun.payload_bytes = padded
        try:
            r, sn = self.scenario(5, ["short_record"], {"short_record": [1, 5]}, size=80000)
        finally:
            faultrun.payload_bytes = orig
        self.assertTrue(any("bytes after the hole moved by -5 B" in x for x in sn.log))
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])

    def test_a_power_cut_while_the_hole_is_fetched_keeps_a_placed_run(self):
        # A byte lost at 19,824 B of a 30 KB image whose bytes from 7,926 B on are 00 FF
        # over and over (rx 2048): the response ends where it should, so the 9 KB ahead
        # of the hole sit at their place, and the journal's record says so. Cut the
        # power at flash operations after that (while the hole is fetched): the resume
        # keeps the run without a check and fetches the hole alone. Before, the run was
        # checked again; no 16 bytes of it occur once within a record's reach, so it was
        # dropped (5.4-7.5 KB per interruption against a bound of 6,208 B).
        # (The runtimes' littlefs make different numbers of flash operations: the cuts
        # step through them one by one until three fall there.)
        sc = {
            "seed": 77851,
            "size": 30000,
            "kinds": ["drop"],
            "faults": {"drop_body_at": [19824]},
            "expect": 2,
            "sim_seed": 287414844,
            "settings": {"rx_size": 2048},
        }
        placed = 0
        op = 50
        while placed < 3:
            op += 1
            sc["cuts"] = [["op", op, None]]
            r, sn = self.scenario_patterned(sc, [(7926, 30000, b"\x00\xff")])
            if not r["cuts_fired"]:
                self.fail("the update ended before op %d: no cut kept a placed run" % op)
            if not any("at their place (journal)" in x for x in sn.log):
                continue
            placed += 1
            self.assertTrue(any("kept" in x and "ahead of a hole" in x for x in sn.log), op)
            self.assertFalse(any("too uniform" in x or "checked" in x for x in sn.log), op)
            self.assertNotIn(16, [q["sent"] for q in sn.sim.server.requests], op)
            self.assertEqual(r["full_restarts"], 0, op)
            self.assertTrue(max(r["refetch"]) <= 4096 + 2048 + 64, (op, r["refetch"]))

    def test_a_later_hole_does_not_write_the_journal_while_the_esp_sends(self):
        # Bytes lost twice in different responses at 1,152,000 baud with a 23,000-byte
        # UART buffer ("stream", 32 KB erases): the first hole's run was placed (the
        # journal said so), and forgetting that when the later hole opened saved the
        # journal's record while the ESP sent (a sector erase and ~45 programs, ~76 ms):
        # 1,375 B lost from the UART, 9,488 B fetched again (found by an adversarial
        # run). The journal forgets it between responses now.
        sc = {
            "seed": 6367,
            "size": 52348,
            "kinds": ["drop", "truncate"],
            "faults": {"drop_body_at": [4382, 15770], "truncate_body_at": 8547},
            "cuts": [],
            "expect": 2,
            "sim_seed": 972892964,
            "settings": {"faithful": True, "baud": 1152000, "uart_rxbuf": 23000},
        }
        sc["faults"]["truncate_final"] = None
        r, sn = self.scenario_run(sc)
        self.assertEqual(len([x for x in sn.log if "keeping the bytes after a hole" in x]), 2)
        self.assertEqual(r["uart_overflows"], 0)
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])

    def test_a_damaged_record_header_costs_only_its_hole(self):
        # One byte of a record's framing altered or lost on the wire: in "+HTTPCGET:"
        # (the record reads as lines), in its digits or comma (a length that does not
        # parse), or its LF (the next header follows). The records after it are kept:
        # the lost record's length is told by where the next header starts, and a
        # record whose LF alone came altered is whole (issue 3: each of these used to
        # cost the rest of the response).
        bound = 4096 + 10240 + 64
        cases = [(0, 0x2B ^ 0x40), (4, -1), (7, 0x00), (10, ord(";")), (11, -1), (-1, 0x0B)]
        cases += [(-1, -1), (12, 0xFF)]
        for idx in (0, 1, 3):  # the header's record (alone), then two of the image's
            for k, b in cases:
                r, sn = self.scenario(
                    5, ["damaged_header"], {"damage_record": [idx, k, b]}, size=40000
                )
                self.assertTrue(self.fired(sn, "damage_record"))
                self.assertEqual(r["full_restarts"], 0, (idx, k, b))
                self.assertTrue(max(r["refetch"] or [0]) <= bound, (idx, k, b, r["refetch"]))
                if k == -1 and idx:  # only the LF, another header follows: nothing again
                    self.assertEqual(r["refetch"], [], (idx, k, b))

    def test_a_record_lost_whole_on_the_wire(self):
        # Header, payload and CRLF gone: nothing tells, everything after is written
        # that many bytes early, and the response ends short. The next request's
        # overlap differs; the block before it is dropped and, when the overlap
        # differs again, everything (adversarial run: one block per attempt used to
        # go, until the attempts ran out and the job was reported 3 for a transient
        # fault).
        r, sn = self.scenario(5, ["drop"], {"lose_record": [3]}, size=40000)
        self.assertTrue(self.fired(sn, "lose_record"))
        self.assertTrue(any("overlap differs again" in x for x in sn.log))
        self.assertEqual(r["statuses"], [1, 2])
        self.assertEqual(r["full_restarts"], 1)
        self.assertLessEqual(r["requests"], 6)

    def test_image_bytes_that_spell_a_final_result_in_a_lost_record(self):
        # The image holds "\r\nOK\r\n" every 97 bytes, so one sits within the last 256
        # bytes of any record; a byte dropped in a record makes its bytes be replayed as
        # lines. Image bytes follow each of them (never the ESP's own final result):
        # the response goes on, the lost record is a hole (adversarial run: it used to
        # end the attempt there and fetch the rest again, up to a full restart).
        for at in (5000, 15000):
            r, sn = self.scenario_spelling(
                b"\r\nOK\r\n", 97, 3, ["drop"], {"drop_body_at": [at]}, size=40000
            )
            self.assertEqual(r["full_restarts"], 0)
            self.assertEqual(len(r["refetch"]), 1)
            self.assertTrue(r["refetch"][0] <= 4096 + 10240 + 64, r["refetch"])

    def test_a_last_record_that_claims_its_own_crlf(self):
        # The last record's header claims 2 bytes more: its CRLF, taken as payload, runs
        # past the image's end and the final OK still comes. Only framing ran past: the
        # image is kept and judged by its digest (no full restart; adversarial run).
        r, sn = self.scenario(7, ["short_record"], {"short_record": [3, 2]}, size=12224)
        self.assertTrue(any("a record ran past the end" in x for x in sn.log))
        self.assertEqual((r["full_restarts"], r["requests"]), (0, 2))

    def test_a_refused_header_from_a_server_that_ignores_range(self):
        # The header request gets the whole file (Range ignored) of an image already
        # running, and the URL expires fast: the whole file of the announced size counts
        # as the file, so the job still ends 5, not 3 for ever (adversarial run).
        f = {"version": 1, "ignore_range": -1, "expire_ms": 800}
        r, sn = self.scenario(3, ["same_version", "ignore_range"], f, size=3821, expect=5)
        self.assertEqual(r["statuses"][-1], 5)

    def test_a_job_notified_again_after_a_3_resumes(self):
        # Wi-Fi stays down past every attempt: the job is reported 3, but the download's
        # record and CRCs stay in the journal, so when the cloud notifies the job again
        # the blocks already in the slot are kept (within the bound, no restart).
        r, sn = self.scenario(
            24, ["wifi_drop"], {"wifi_drop_at_body": 25000, "wifi_down_ms": 400000}, size=40000
        )
        self.assertEqual(r["statuses"], [1, 3, 1, 2])
        self.assertTrue(any("resuming job" in x for x in sn.log))
        q = sn.sim.server.requests
        self.assertGreater(q[-1]["start"], 20000)
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])

    def test_server_stalls_past_the_timeout(self):
        r, sn = self.scenario(
            18, ["server_stall"], {"server_stall_at": 5000, "server_stall_ms": 30000}
        )
        self.assertTrue(self.fired(sn, "server_stall"))
        self.assertGreaterEqual(r["requests"], 2)

    def test_esp_output_stalls_mid_record(self):
        # Within the stall bound (the ESP's network timeout, 5 s, + 2 s + a record's
        # wire time, 0.9 s) the record is held and completes: nothing is fetched twice.
        # Past it, the attempt fails and the next resumes.
        for ms, requests in ((500, 2), (7000, 2), (12000, 3)):
            r, sn = self.scenario(19, ["esp_stall"], {"stall_at_body": 5000, "stall_ms": ms})
            self.assertTrue(self.fired(sn, "stall_at_body"), ms)
            self.assertEqual(r["requests"], requests, ms)
            if requests == 2:
                self.assertEqual(r["refetch"], [], ms)  # nothing fetched twice

    def test_esp_falls_silent_mid_record(self):
        r, sn = self.scenario(20, ["esp_silence"], {"silence_at_body": 5000, "silence_ms": 20000})
        self.assertTrue(self.fired(sn, "silence_at_body"))

    def test_short_record_header(self):
        r, sn = self.scenario(21, ["short_record"], {"short_record": [1, 10]})
        self.assertTrue(self.fired(sn, "short_record"))

    def test_a_lying_record_header_costs_only_its_hole(self):
        # A header that claims more (or fewer) bytes than its record holds, mid-image:
        # the bytes ahead are written as if bytes were lost, the response ends that many
        # bytes past (short of) its end, and they are moved to their place: the hole
        # and the image's last bytes are fetched, within the bound (issue 3).
        bound = 4096 + 10240 + 64
        # (the last: fewer by one, where the first block ahead used to be lost too and
        # the hole came to 14,940 B; an adversarial run)
        cases = [(23, 60000, 4, x) for x in (10, -7, 1, -1, -40)] + [(7, 80000, 3, -1)]
        for seed, size, idx, extra in cases:
            f = {"short_record": [idx, extra]}
            r, sn = self.scenario(seed, ["short_record"], f, size=size)
            self.assertTrue(self.fired(sn, "short_record"), extra)
            self.assertTrue(any("bytes after the hole moved by" in x for x in sn.log), extra)
            self.assertTrue(max(r["refetch"]) <= bound, (extra, r["refetch"]))
            self.assertEqual(r["full_restarts"], 0, extra)

    def test_a_header_that_claims_more_than_rx_size(self):
        # A record of 9,999 B whose header claims 11,131 (more than rx_size): the header
        # parses, so its own size on the wire tells the record's length from where the
        # next header starts, and the record is a hole (it used to cost everything after
        # it: 59,573 B).
        r, sn = self.scenario(17, ["short_record"], {"short_record": [3, 1132]}, size=64516)
        self.assertTrue(any("keeping the bytes after a hole" in x for x in sn.log))
        self.assertEqual(len(r["refetch"]), 1)
        self.assertLessEqual(r["refetch"][0], 4096 + 10240 + 64)

    def test_a_damaged_header_and_a_lying_header_in_one_response(self):
        # Two records lost in one response, each placed by a length that may be off: a
        # damaged header's measured one (one byte short when a byte was lost) and a
        # lying header's claim. Each run is checked and moved alone once its hole is
        # the current one; two errors that cancel out no longer pass for in place; a
        # last record whose header came damaged (nothing after it to measure) does not
        # hide where the lying one moved the bytes. (Seeds 468 and 782 of the campaign
        # fetched 17 KB per interruption; adversarial variants up to 45 KB.)
        bound = 4096 + 10240 + 64
        cases = [
            # A byte lost, then a lie: the first run (part of a block) is one byte
            # early and cannot move alone, so it goes (the first hole then reaches the
            # second); the second run moves by -1 + 29.
            (5, 80000, [1, 0, -1], [3, 29], [-28], True),
            # -1 and +1: the response ends in place; the second run is in place too
            (5, 80000, [1, 0, -1], [3, 1], [], True),
            # the lie first, then the damage: both runs move, each alone
            (31, 80000, [5, 7, 81], [2, -300], [300, 300], False),
            # the last record's header damaged: the response ended 2,892 B short
            (31, 40000, [6, 0, -1], [1, 29], [-29], False),
        ]
        for seed, size, dmg, lie, moves, dropped in cases:
            f = {"damage_record": dmg, "short_record": lie}
            r, sn = self.scenario(seed, ["damaged_header", "short_record"], f, size=size)
            self.assertEqual(len(self.fired(sn, "damage_record")), 1)
            self.assertEqual(len(self.fired(sn, "short_record")), 1)
            got = [int(x.split("moved by ")[1].split()[0]) for x in sn.log if "moved by" in x]
            self.assertEqual(got, moves, (dmg, lie))
            self.assertEqual(any("not found in place" in x for x in sn.log), dropped)
            self.assertFalse(any("overlap differs" in x for x in sn.log), (dmg, lie))
            self.assertEqual(r["statuses"], [1, 2])
            self.assertEqual(r["full_restarts"], 0)
            self.assertTrue(max(r["refetch"]) <= bound, (dmg, lie, r["refetch"]))

    def test_a_damaged_header_right_after_a_record_that_went_wrong(self):
        # A lying header or a lost payload byte, and the next record's header damaged
        # (a length digit altered, a claim over rx size): the damaged record is measured
        # from where its header's line began, in the replayed bytes or after them, and
        # the records after it are kept. It used to end the attempt: 17-38 KB per
        # interruption, and with 2 KB records full restarts. With ":" altered the line
        # is not taken for a header (image bytes spell such pieces): the bytes after the
        # hole are found off by the lie plus that record, and moved.
        damaged = "record header damaged"
        cases = [
            (None, 40000, {"short_record": [1, 1], "damage_record": [2, 10, 120]}, damaged),
            (None, 80000, {"short_record": [1, 300], "damage_record": [2, 10, 120]}, damaged),
            (2048, 40000, {"short_record": [3, -1], "damage_record": [4, 10, 57]}, damaged),
            (2048, 40000, {"drop_body_at": [2053], "damage_record": [3, 11, 58]}, damaged),
            # the lie claims over rx size (measured to the next header), and that next
            # header claims over rx size too: two damaged records in a row
            (2048, 40000, {"short_record": [3, 1500], "damage_record": [4, 11, 57]}, damaged),
            (2048, 40000, {"short_record": [3, -300], "damage_record": [4, 9, 120]}, "moved by"),
        ]
        for rx, size, f, said in cases:
            settings = {"rx_size": rx} if rx else None
            bound = 4096 + (rx or 10240) + 64
            kinds = ["damaged_header", "drop" if "drop_body_at" in f else "short_record"]
            r, sn = self.scenario(5, kinds, f, size=size, settings=settings)
            self.assertEqual(len(self.fired(sn, "damage_record")), 1, f)
            self.assertTrue(any(said in x for x in sn.log), f)
            self.assertEqual(r["statuses"], [1, 2], f)
            self.assertEqual(r["full_restarts"], 0, f)
            self.assertTrue(max(r["refetch"]) <= bound, (f, r["refetch"]))

    def test_a_run_moved_by_two_lost_records_is_checked_at_their_sum(self):
        # A lying header (300 B fewer) and, two records on, a lost first length digit
        # (2,000 B fewer): the bytes after the second hole sit 2,300 B early, more than
        # one record's reach (2 KB records). The response's end tells that sum, and the
        # check looks that far: the run is moved, not dropped (19.7 KB per
        # interruption before).
        f = {"short_record": [2, -300], "damage_record": [4, 10, -1]}
        kinds = ["damaged_header", "short_record"]
        r, sn = self.scenario(5, kinds, f, size=40000, settings={"rx_size": 2048})
        self.assertEqual(len(self.fired(sn, "damage_record")), 1)
        self.assertTrue(any("bytes after the hole moved by 2300 B" in x for x in sn.log))
        self.assertEqual(r["statuses"], [1, 2])
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch"]) <= 4096 + 2048 + 64, r["refetch"])

    def test_a_header_that_lost_its_first_length_digit(self):
        # "+HTTPCGET:6980," arrives as "+HTTPCGET:980,": a header claiming thousands of
        # bytes fewer than its record held, more than the run after the hole is long.
        # The check tests that one shift directly (the slot's 16 bytes at x are the
        # file's at x + 6000); a run that then has no whole block but ends the image is
        # kept as the joint. (Adversarial run: the run was dropped, 14.8-15.3 KB.)
        bound = 4096 + 10240 + 64
        for seed, size, idx, move in ((579, 40000, 5, 6000), (2, 80000, 12, 9000)):
            f = {"damage_record": [idx, 10, -1]}
            r, sn = self.scenario(seed, ["short_record", "damaged_header"], f, size=size)
            self.assertTrue(any("moved by %d B" % move in x for x in sn.log), move)
            self.assertEqual(r["full_restarts"], 0)
            self.assertTrue(max(r["refetch"]) <= bound, (move, r["refetch"]))

    def test_a_damaged_header_after_a_record_a_lie_swallowed(self):
        # A header claims 4095 B more than its record held: the next record is found in
        # the replay of what it swallowed, and the header after that comes damaged. It
        # is measured from where the record found in the replay ended (it went unseen:
        # 28 KB per interruption, an adversarial run).
        f = {"short_record": [1, 4095], "damage_record": [3, 0, -1]}
        r, sn = self.scenario(5, ["short_record", "damaged_header"], f, size=60000)
        self.assertTrue(any("record header damaged" in x for x in sn.log))
        self.assertEqual(r["full_restarts"], 0)
        self.assertTrue(max(r["refetch"]) <= 4096 + 10240 + 64, r["refetch"])

    def test_mangled_final_result(self):
        r, sn = self.scenario(22, ["mangle_final"], {"mangle_final": "\r\nO\r\n"})
        self.assertTrue(self.fired(sn, "mangle_final"))

    # --- commands and the cloud -----------------------------------------------------
    def test_busy_answers(self):
        r, sn = self.scenario(23, ["busy"], {"busy_next": 3})
        self.assertEqual(len(self.fired(sn, "busy")), 3)
        r, sn = self.scenario(23, ["busy"], {"busy_next": 1, "busy_then_run_ms": 500})
        self.assertEqual(len(self.fired(sn, "busy")), 1)

    def test_lost_url_byte(self):
        r, sn = self.scenario(24, ["lose_url_byte"], {"lose_url_byte": 500})
        self.assertTrue(self.fired(sn, "lose_url_byte"))

    def test_result_refused_while_the_cloud_is_down(self):
        r, sn = self.scenario(
            25, ["result_refused"], {"refuse_result": 2, "refuse_result_ms": 10000}
        )
        self.assertEqual(len(self.fired(sn, "refuse_result")), 2)

    # --- permanent faults: the truthful status --------------------------------------
    def test_url_always_refused_reports_3(self):
        r, sn = self.scenario(26, ["refused_403"], {"fail_always": 403}, expect=3)
        self.assertFalse(r["committed"])

    def test_image_missing_reports_3(self):
        r, sn = self.scenario(27, ["missing_404"], {"fail_always": 404}, expect=3)

    def test_image_with_a_bad_digest_reports_3(self):
        r, sn = self.scenario(28, ["bad_digest"], {"corrupt_at": 5000}, expect=3)
        self.assertFalse(r["committed"])

    def test_image_for_another_board_reports_5(self):
        r, sn = self.scenario(29, ["wrong_board"], {"board_id": "rp2-pico"}, expect=5)
        # the agent looks twice before a 5, at the 64-byte header alone each time
        self.assertEqual([q["sent"] for q in sn.sim.server.requests], [64, 64])

    def test_same_version_reports_5(self):
        r, sn = self.scenario(30, ["same_version"], {"version": 1}, expect=5)

    # --- host power cuts ------------------------------------------------------------
    def test_power_cut_in_flash_operations(self):
        # littlefs makes different operations on the two runtimes: count them first
        ops = []
        sc = faultrun.make_scenario(31, size=SIZE, kinds=[], cuts=[], faults={})
        faultrun.Scenario(sc, self.flash, op_log=ops).run()
        n = len(ops)
        self.assertGreater(n, 20)
        for op in (0, n // 5, n // 3, n // 2, 2 * n // 3, n - 2, n - 1):
            r, sn = self.scenario(31, [], {}, cuts=[["op", op, None]])
            self.assertEqual(r["cuts_fired"], 1, op)

    def test_power_cut_at_instants(self):
        for t in (150, 400, 800):
            r, sn = self.scenario(32, [], {}, cuts=[["t", t, 500]])
            self.assertEqual(r["cuts_fired"], 1, t)


if __name__ == "__main__":
    unittest.main()
