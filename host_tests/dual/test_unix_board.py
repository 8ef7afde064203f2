"""The desktop board (boards/unix, DESIGN.md section 4): NOR flash model, partitions,
boot record, boot logic and journal. Runs under CPython (pytest) and MicroPython
(host_tests/mp_run.py test_unix_board).

Power cuts here are made by a NORFlash subclass that raises instead of ending the
process; host_tests/test_power_cut.py checks the real kill in a child process."""

import hashlib
import os
import unittest

import board as unix_board
from board import SLOT_SIZE, Board, provision
from lfs import mount
from rmota.journal import CRCLog, Journal
from bootrec import RECORD_SIZE, BootRecord, BootStore, Bricked
from nor import NORFlash, Partition

_SEQ = [0]


def _tmp(tag):
    # No tempfile on MicroPython: a random name under /tmp.
    _SEQ[0] += 1
    rnd = "".join("%02x" % b for b in os.urandom(6))
    return "/tmp/rmota_ut_%s_%s_%d" % (tag, rnd, _SEQ[0])


def _rm(*paths):
    for p in paths:
        for q in (p, p + ".journal", p + ".journal.tmp"):
            try:
                os.remove(q)
            except OSError:
                pass


class _Cut(Exception):
    pass


class CuttableNOR(NORFlash):
    """A power cut that raises (the test carries on and 'reboots' by reopening)."""

    def power_cut(self):
        self._dead = True
        raise _Cut()


def _read(nor, addr, n):
    b = bytearray(n)
    nor.read(addr, b)
    return bytes(b)


def _file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _put_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _get_region(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def _put_region(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _image(n, seed):
    # Deterministic pseudo-random bytes (no random module needed).
    out = bytearray(n)
    x = seed * 2654435761 + 12345
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


class TestNOR(unittest.TestCase):
    def setUp(self):
        self.path = _tmp("nor")
        self.nor = CuttableNOR(self.path, 4 * 4096, create=True)

    def tearDown(self):
        try:
            self.nor.close()
        except Exception:
            pass
        _rm(self.path)

    def test_erased_reads_ff(self):
        self.assertEqual(_read(self.nor, 0, 4 * 4096), b"\xff" * (4 * 4096))

    def test_program_is_and(self):
        self.nor.program(100, b"\x0f\xf0\x55\xff")
        self.nor.program(100, b"\xff\x3c\xaa\x00")
        self.assertEqual(_read(self.nor, 99, 6), b"\xff\x0f\x30\x00\x00\xff")
        # programming 0xFF over programmed bits changes nothing: bits never go back to 1
        self.nor.program(100, b"\xff\xff\xff\xff")
        self.assertEqual(_read(self.nor, 100, 4), b"\x0f\x30\x00\x00")

    def test_program_spans_sectors(self):
        self.nor.program(4090, b"\x00" * 12)
        self.assertEqual(_read(self.nor, 4088, 16), b"\xff\xff" + b"\x00" * 12 + b"\xff\xff")

    def test_erase_whole_sector_only(self):
        self.nor.program(0, b"\x00" * (3 * 4096))
        self.nor.erase(1)
        self.assertEqual(_read(self.nor, 4095, 1), b"\x00")
        self.assertEqual(_read(self.nor, 4096, 4096), b"\xff" * 4096)
        self.assertEqual(_read(self.nor, 8192, 1), b"\x00")
        with self.assertRaises(ValueError):
            self.nor.erase(4)
        with self.assertRaises(ValueError):
            self.nor.erase(-1)

    def test_counters(self):
        self.nor.erase(2)
        self.nor.erase(2)
        self.nor.erase(0)
        self.nor.program(0, b"ab")
        self.assertEqual(list(self.nor.erase_counts), [1, 0, 2, 0])
        self.assertEqual(self.nor.erase_ops, 3)
        self.assertEqual(self.nor.program_ops, 1)
        self.assertEqual(self.nor.op_count, 4)
        # reads are not operations
        _read(self.nor, 0, 10)
        self.assertEqual(self.nor.op_count, 4)

    def test_out_of_range(self):
        with self.assertRaises(ValueError):
            self.nor.program(4 * 4096 - 1, b"ab")
        with self.assertRaises(ValueError):
            _read(self.nor, 4 * 4096, 1)
        self.assertEqual(self.nor.op_count, 0)
        self.assertEqual(_read(self.nor, 4 * 4096 - 1, 1), b"\xff")

    def test_file_size_checked(self):
        with self.assertRaises(ValueError):
            NORFlash(self.path, 8 * 4096)

    def test_torn_program(self):
        self.nor.program(0, b"\xf0" * 8)
        self.nor.cut_at(1, 3)
        with self.assertRaises(_Cut):
            self.nor.program(0, b"\x0f" * 8)
        # first 3 bytes programmed (AND), the rest old
        self.assertEqual(_file_bytes(self.path)[:9], b"\x00" * 3 + b"\xf0" * 5 + b"\xff")
        # a dead flash refuses everything
        with self.assertRaises(OSError):
            self.nor.program(0, b"\x00")

    def test_torn_erase(self):
        self.nor.program(4096, b"\x00" * 4096)
        self.nor.cut_at(1, 1000)
        with self.assertRaises(_Cut):
            self.nor.erase(1)
        data = _file_bytes(self.path)[4096:8192]
        self.assertEqual(data[:1000], b"\xff" * 1000)
        self.assertEqual(data[1000:], b"\x00" * 3096)

    def test_cut_after_whole_operation(self):
        self.nor.cut_at(0, 99999)
        with self.assertRaises(_Cut):
            self.nor.program(10, b"\x00\x00")
        self.assertEqual(_file_bytes(self.path)[9:13], b"\xff\x00\x00\xff")

    def test_cut_at_zero_bytes(self):
        self.nor.program(0, b"\x00")
        self.nor.cut_at(1, 0)
        with self.assertRaises(_Cut):
            self.nor.erase(0)
        self.assertEqual(_file_bytes(self.path)[0:1], b"\x00")

    def test_reopen_keeps_contents(self):
        self.nor.program(5, b"xyz")
        self.nor.close()
        again = NORFlash(self.path, 4 * 4096)
        self.assertEqual(_read(again, 5, 3), b"xyz")
        again.close()


class TestBlockErase(unittest.TestCase):
    """32 and 64 KB block erases (commands 0x52/0xD8) and Partition.erase_blocks."""

    def setUp(self):
        self.path = _tmp("blk")
        self.nor = CuttableNOR(self.path, 40 * 4096, create=True)

    def tearDown(self):
        try:
            self.nor.close()
        except Exception:
            pass
        _rm(self.path)

    def test_one_command_erases_an_aligned_block(self):
        nor = self.nor
        nor.program(0, b"\x00" * (40 * 4096))
        stalls = []
        nor.stall_hook = stalls.append
        nor.block32_us, nor.block64_us = 120000, 150000
        ops = nor.op_count
        nor.block_erase(16, 16)
        nor.block_erase(8, 8)
        self.assertEqual(nor.op_count - ops, 2)
        self.assertEqual(stalls, [150000, 120000])
        self.assertEqual(_read(nor, 8 * 4096, 24 * 4096), b"\xff" * (24 * 4096))
        self.assertEqual(_read(nor, 8 * 4096 - 1, 1), b"\x00")
        self.assertEqual(_read(nor, 32 * 4096, 1), b"\x00")
        self.assertEqual(list(nor.erase_counts[7:33]), [0] + [1] * 24 + [0])
        for sector, n in ((4, 8), (8, 16), (32, 16), (0, 4), (-8, 8)):
            with self.assertRaises(ValueError):
                nor.block_erase(sector, n)

    def test_a_torn_block_erase_is_erased_in_address_order(self):
        nor = self.nor
        nor.program(0, b"\x00" * (16 * 4096))
        nor.cut_at(nor.op_count, 5 * 4096 + 7)
        with self.assertRaises(_Cut):
            nor.block_erase(0, 16)
        nor2 = NORFlash(self.path, 40 * 4096)
        try:
            self.assertEqual(_read(nor2, 0, 5 * 4096 + 7), b"\xff" * (5 * 4096 + 7))
            self.assertEqual(_read(nor2, 5 * 4096 + 7, 1), b"\x00")
            self.assertEqual(_read(nor2, 16 * 4096 - 1, 1), b"\x00")
        finally:
            nor2.close()

    def test_erase_blocks_uses_the_largest_aligned_commands(self):
        nor = self.nor
        part = Partition(nor, 6, 34)  # sectors 6..39
        nor.program(0, b"\x00" * (40 * 4096))
        ops = nor.op_count
        # sectors 6, 7 one by one; 8..15 one 32 KB block; 16..31 one 64 KB block; 32 alone
        self.assertEqual(part.erase_blocks(0, 27), 5)
        self.assertEqual(nor.op_count - ops, 5)
        self.assertEqual(_read(nor, 6 * 4096, 27 * 4096), b"\xff" * (27 * 4096))
        self.assertEqual(_read(nor, 5 * 4096 + 4095, 2), b"\x00\xff")
        self.assertEqual(_read(nor, 33 * 4096 - 1, 2), b"\xff\x00")
        with self.assertRaises(ValueError):
            part.erase_blocks(30, 5)  # leaves the partition
        self.assertEqual(_read(nor, 36 * 4096, 1), b"\x00")  # nothing touched


class TestPartition(unittest.TestCase):
    def setUp(self):
        self.path = _tmp("part")
        self.nor = NORFlash(self.path, 8 * 4096, create=True)
        self.a = Partition(self.nor, 2, 3)
        self.b = Partition(self.nor, 5, 2)

    def tearDown(self):
        self.nor.close()
        _rm(self.path)

    def test_ioctl(self):
        self.assertEqual(self.a.ioctl(1, 0), 0)
        self.assertEqual(self.a.ioctl(2, 0), 0)
        self.assertEqual(self.a.ioctl(3, 0), 0)
        self.assertEqual(self.a.ioctl(4, 0), 3)
        self.assertEqual(self.a.ioctl(5, 0), 4096)

    def test_read_write_offset(self):
        self.a.writeblocks(1, b"hello", 10)
        buf = bytearray(5)
        self.a.readblocks(1, buf, 10)
        self.assertEqual(bytes(buf), b"hello")
        self.assertEqual(_read(self.nor, (2 + 1) * 4096 + 10, 5), b"hello")

    def test_two_arg_writeblocks_does_not_erase(self):
        self.a.writeblocks(0, b"\x0f" * 4096)
        self.a.writeblocks(0, b"\xf0" * 4096)
        buf = bytearray(4096)
        self.a.readblocks(0, buf)
        self.assertEqual(bytes(buf), b"\x00" * 4096)
        self.assertEqual(self.nor.erase_ops, 0)
        self.assertEqual(self.a.ioctl(6, 0), 0)
        self.a.readblocks(0, buf)
        self.assertEqual(bytes(buf), b"\xff" * 4096)
        self.assertEqual(self.nor.erase_counts[2], 1)

    def test_write_spans_blocks(self):
        self.a.writeblocks(0, b"\x00" * 5000, 100)
        self.assertEqual(_read(self.nor, 2 * 4096 + 99, 1), b"\xff")
        self.assertEqual(_read(self.nor, 2 * 4096 + 5099, 2), b"\x00\xff")

    def test_cannot_reach_neighbours(self):
        before = _file_bytes(self.path)
        with self.assertRaises(ValueError):
            self.a.writeblocks(2, b"\x00" * 2, 4095)  # one byte past the end
        with self.assertRaises(ValueError):
            self.a.writeblocks(3, b"\x00")
        with self.assertRaises(ValueError):
            self.a.writeblocks(-1, b"\x00", 4095)
        with self.assertRaises(ValueError):
            self.a.readblocks(0, bytearray(3 * 4096 + 1))
        with self.assertRaises(ValueError):
            self.a.ioctl(6, 3)
        with self.assertRaises(ValueError):
            self.b.ioctl(6, -1)
        self.assertEqual(_file_bytes(self.path), before)
        self.assertEqual(self.nor.op_count, 0)
        # the last byte of a partition is reachable, and only it changes
        self.a.writeblocks(2, b"\x00", 4095)
        self.assertEqual(_read(self.nor, 5 * 4096 - 1, 2), b"\x00\xff")

    def test_partition_must_fit(self):
        with self.assertRaises(ValueError):
            Partition(self.nor, 6, 3)


def _record(active, seq_tag):
    r = BootRecord(active=active)
    r.lengths[active] = 1000 + seq_tag
    r.versions[active] = seq_tag
    r.digests[active] = bytes([seq_tag]) * 32
    return r


class TestBootRecord(unittest.TestCase):
    def setUp(self):
        self.path = _tmp("rec")
        NORFlash(self.path, 4 * 4096, create=True).close()

    def tearDown(self):
        _rm(self.path)

    def test_round_trip(self):
        r = _record(1, 7)
        r.rolled_back = True
        r.seq = 42
        back = BootRecord.unpack(r.pack())
        self.assertEqual(len(r.pack()), RECORD_SIZE)
        self.assertEqual(back.active, 1)
        self.assertEqual(back.seq, 42)
        self.assertTrue(back.rolled_back)
        self.assertEqual(back.lengths, [0, 1007])
        self.assertEqual(back.digests[1], b"\x07" * 32)
        bad = r.pack()
        bad[20] ^= 1
        self.assertIsNone(BootRecord.unpack(bad))
        self.assertIsNone(BootRecord.unpack(b"\xff" * RECORD_SIZE))

    def test_ping_pong(self):
        nor = NORFlash(self.path, 4 * 4096)
        st = BootStore(nor)
        self.assertIsNone(st.read())
        where = []
        for k in range(1, 6):
            st.write(_record(k & 1, k))
            rec, w = st.newest()
            where.append(w)
            self.assertEqual(rec.seq, k)
            self.assertEqual(rec.versions[k & 1], k)
        self.assertEqual(where, [0, 1, 0, 1, 0])
        self.assertEqual(list(nor.erase_counts), [3, 2, 0, 0])
        nor.close()

    def _torn_everywhere(self, writes_before):
        # Base state: ``writes_before`` records written. Then tear the next write (erase of
        # the spare sector = op 0, program of the record = op 1) at every byte: the store
        # must read back the old record or the new one, nothing else.
        nor = NORFlash(self.path, 4 * 4096, create=True)
        st = BootStore(nor)
        for k in range(1, writes_before + 1):
            st.write(_record(k & 1, k))
        nor.close()
        base = _file_bytes(self.path)
        new_tag = writes_before + 1
        seen_old = seen_new = 0
        for op, length in ((0, 4096), (1, RECORD_SIZE)):
            for byte in range(length + 1):
                _put_file(self.path, base)
                nor = CuttableNOR(self.path, 4 * 4096)
                nor.cut_at(op, byte)
                try:
                    BootStore(nor).write(_record(new_tag & 1, new_tag))
                    self.fail("no cut")
                except _Cut:
                    pass
                again = NORFlash(self.path, 4 * 4096)
                rec = BootStore(again).read()
                again.close()
                self.assertIsNotNone(rec, "no record after cut at op %d byte %d" % (op, byte))
                if rec.seq == new_tag:
                    self.assertEqual(rec.versions[new_tag & 1], new_tag)
                    seen_new += 1
                else:
                    self.assertEqual(rec.seq, writes_before)
                    self.assertEqual(rec.versions[writes_before & 1], writes_before)
                    seen_old += 1
        # only the complete program makes the new record
        self.assertEqual(seen_new, 1)
        self.assertEqual(seen_old, 4096 + 1 + RECORD_SIZE)

    def test_torn_write_every_byte_spare_blank(self):
        self._torn_everywhere(1)

    def test_torn_write_every_byte_spare_holds_older(self):
        self._torn_everywhere(2)


def _write_slot(bdev, data):
    mv = memoryview(data)
    block = 0
    for off in range(0, len(data), 4096):
        bdev.ioctl(6, block)
        bdev.writeblocks(block, mv[off : off + 4096], 0)
        block += 1


class TestBoot(unittest.TestCase):
    def setUp(self):
        self.path = _tmp("board")
        self.v1 = _image(5000, 1)
        self.v2 = _image(9000, 2)
        provision(self.path, self.v1, 1)
        self.boards = []

    def tearDown(self):
        for b in self.boards:
            try:
                b.close()
            except Exception:
                pass
        _rm(self.path)

    def _power_on(self, **kw):
        # Each Board is a new process: the previous one is gone (closed).
        for b in self.boards:
            try:
                b.close()
            except Exception:
                pass
        b = Board(self.path, **kw)
        self.boards.append(b)
        return b

    def _update(self, b, data, version):
        slot = b.inactive_slot()
        _write_slot(slot.bdev, data)
        b.commit(slot.index, len(data), hashlib.sha256(data).digest(), version)
        return slot.index

    def test_factory_state(self):
        b = self._power_on()
        self.assertEqual(b.board_id, b"unix")
        self.assertEqual(b.boot_state(), {"slot": 0, "trial": False, "rolled_back": False})
        self.assertEqual(b.running_slot(), 0)
        self.assertEqual(b.running_version(), 1)
        s = b.inactive_slot()
        self.assertEqual((s.index, s.size), (1, SLOT_SIZE))
        self.assertEqual(s.bdev.ioctl(4, 0) * s.bdev.ioctl(5, 0), SLOT_SIZE)
        self.assertIsNone(b.uart)
        self.assertEqual(b.settings["line_max"], 2048)
        self.assertFalse(b.settings["allow_raw"])
        # a steady boot writes nothing
        self.assertEqual(b.nor.op_count, 0)

    def test_settings_override(self):
        b = self._power_on(settings={"rx_size": 4096})
        self.assertEqual(b.settings["rx_size"], 4096)
        self.assertEqual(b.settings["baud"], 115200)

    def test_trial_confirm(self):
        b = self._power_on()
        self.assertEqual(self._update(b, self.v2, 2), 1)
        b = self._power_on()
        self.assertEqual(b.boot_state(), {"slot": 1, "trial": True, "rolled_back": False})
        self.assertEqual(b.running_version(), 2)
        b.confirm()
        self.assertFalse(b.boot_state()["trial"])
        b = self._power_on()
        self.assertEqual(b.boot_state(), {"slot": 1, "trial": False, "rolled_back": False})
        self.assertEqual(b.inactive_slot().index, 0)
        ops = b.nor.op_count
        b.confirm()  # not on trial: no-op, no write
        self.assertEqual(b.nor.op_count, ops)

    def test_unconfirmed_trial_rolls_back(self):
        b = self._power_on()
        self._update(b, self.v2, 2)
        b = self._power_on()  # trial → trial_booted
        self.assertTrue(b.boot_state()["trial"])
        b = self._power_on()  # never confirmed: roll back
        self.assertEqual(b.boot_state(), {"slot": 0, "trial": False, "rolled_back": True})
        self.assertEqual(b.running_version(), 1)
        b = self._power_on()  # stays rolled back, remembers it
        self.assertEqual(b.boot_state(), {"slot": 0, "trial": False, "rolled_back": True})
        # the failed trial is forgotten: it can never boot as a fall-back later
        self.assertEqual(b.loader.record.lengths[1], 0)
        b.slots[0].writeblocks(0, b"\x00", 0)
        with self.assertRaises(Bricked):
            self._power_on()
        fix = Board(self.path, boot=False)  # repair slot 0 "with a programmer"
        self.boards.append(fix)
        _write_slot(fix.slots[0], self.v1)
        b = self._power_on()
        self.assertEqual(b.running_slot(), 0)
        # the next commit clears rolled_back
        self._update(b, self.v2, 3)
        b = self._power_on()
        self.assertEqual(b.boot_state(), {"slot": 1, "trial": True, "rolled_back": False})

    def test_commit_refuses_running_slot(self):
        b = self._power_on()
        with self.assertRaises(ValueError):
            b.commit(0, len(self.v1), hashlib.sha256(self.v1).digest(), 5)
        with self.assertRaises(ValueError):
            b.commit(1, SLOT_SIZE + 1, b"\x00" * 32, 5)
        with self.assertRaises(ValueError):
            b.commit(1, 10, b"\x00" * 31, 5)
        with self.assertRaises(ValueError):
            b.commit(2, 10, b"\x00" * 32, 5)

    def test_corrupt_trial_image_falls_back(self):
        b = self._power_on()
        idx = self._update(b, self.v2, 2)
        b.slots[idx].writeblocks(1, b"\x00", 7)  # one flipped byte after the commit
        b = self._power_on()
        st = b.boot_state()
        self.assertEqual(st["slot"], 0)
        self.assertFalse(st["trial"])
        self.assertTrue(st["rolled_back"])
        self.assertIsNotNone(b.loader.fell_back)

    def test_corrupt_confirmed_slot_falls_back_to_verified_other(self):
        b = self._power_on()
        self._update(b, self.v2, 2)
        b = self._power_on()
        b.confirm()  # slot 1 confirmed; slot 0 still holds v1
        b.slots[1].writeblocks(0, b"\x00", 0)
        b = self._power_on()
        self.assertEqual(b.running_slot(), 0)
        self.assertEqual(b.running_version(), 1)

    def test_bricked_both_slots_bad(self):
        b = self._power_on()
        b.slots[0].writeblocks(0, b"\x00", 0)
        with self.assertRaises(Bricked):
            self._power_on()

    def test_bricked_no_record(self):
        for b in self.boards:
            b.close()
        self.boards = []
        _rm(self.path)
        with self.assertRaises(Bricked):
            Board(self.path, create=True)
        b = Board(self.path, boot=False)  # blank flash, not booted: nothing to adopt
        self.assertIsNone(b.loader.record)
        b.close()

    def test_reboot_exits_75_and_closes_flash(self):
        b = self._power_on()
        with self.assertRaises(SystemExit) as cm:
            b.reboot()
        code = cm.exception.code if hasattr(cm.exception, "code") else cm.exception.args[0]
        self.assertEqual(code, 75)
        with self.assertRaises(OSError):
            b.nor.program(0, b"\x00")
        with self.assertRaises(OSError):
            b.journal.save({"late": 1})

    def test_boot_cut_at_every_operation(self):
        # Commit, then power-cut the boot that marks the trial as booted (erase = op 0,
        # program = op 1) at a few bytes of each: the next boot must still come up,
        # from the old record (trial: boots the new slot) or the new one (trial_booted:
        # rolls back).
        b = self._power_on()
        self._update(b, self.v2, 2)
        b.close()
        base = _get_region(self.path, 0, 2 * 4096)  # the boot only touches the record
        for op, byte in ((0, 0), (0, 50), (0, 4096), (1, 0), (1, 95), (1, 96)):
            _put_region(self.path, 0, base)
            nor = CuttableNOR(self.path, unix_board.FLASH_SIZE)
            nor.cut_at(op, byte)
            with self.assertRaises(_Cut):
                Board(self.path, nor=nor)
            nor.close()
            b = self._power_on()
            st = b.boot_state()
            got = (st["slot"], st["trial"], st["rolled_back"])
            want = (1, True, False) if (op, byte) != (1, 96) else (0, False, True)
            self.assertEqual(got, want, "cut at op %d byte %d" % (op, byte))


class TestJournal(unittest.TestCase):
    """The agent's journal on littlefs over the NOR model (DESIGN.md section 4)."""

    SECTORS = 16

    def setUp(self):
        self.path = _tmp("journal")
        NORFlash(self.path, self.SECTORS * 4096, create=True).close()
        self.j = self._open()

    def _open(self, nor=None):
        self.nor = nor or NORFlash(self.path, self.SECTORS * 4096)
        return Journal(mount(Partition(self.nor, 0, self.SECTORS)))

    def tearDown(self):
        self.nor.close()
        _rm(self.path)

    def test_missing_is_none(self):
        self.assertIsNone(self.j.load())
        self.assertEqual(self.j.crcs(), [])

    def test_round_trip_and_replace(self):
        self.j.save({"job": "abc", "done": 4096, "hdr": "52"})
        self.assertEqual(self.j.load(), {"job": "abc", "done": 4096, "hdr": "52"})
        self.j.save({"job": "abc", "done": 8192})
        self.nor.close()
        self.j = self._open()  # survives a power cycle
        self.assertEqual(self.j.load(), {"job": "abc", "done": 8192})
        self.j.clear()
        self.assertIsNone(self.j.load())
        self.j.clear()  # clearing twice is fine

    def test_a_finished_tmp_record_stands_in_for_a_missing_one_and_damage_is_none(self):
        # FAT's rename removes the old file first: a power cut between leaves only the
        # finished job.tmp. A record larger than any (damage) loads as None, not as a
        # MemoryError on a small heap.
        fs = self.j.fs
        f = fs.open("job.tmp", "wb")
        f.write(b'{"job": "abc", "done": 4096}')
        f.close()
        self.assertEqual(self.j.load(), {"job": "abc", "done": 4096})
        self.j.save({"job": "abc", "done": 8192})
        self.assertEqual(self.j.load(), {"job": "abc", "done": 8192})
        f = fs.open("job.json", "wb")
        f.write(b'{"x": "' + b"a" * 40000 + b'"}')
        f.close()
        self.assertIsNone(self.j.load())

    def test_damage_that_still_parses_loads_as_none(self):
        # Nested deeper than CPython's parser goes (RecursionError, a RuntimeError: it
        # escaped load() and every cycle ended in an agent error), not a dict, or a job
        # id no notification has (a CR LF in it split AT+RMOTARESULT into commands of
        # its own), itself or in the download record a result keeps.
        fs = self.j.fs
        for raw in (
            b"[" * 3000,
            b'{"a": ' * 1500,
            b"[1, 2]",
            b'"job"',
            b'{"stage": "report", "job": "J\\r\\nAT+RST", "status": 3, "info": "x"}',
            b'{"stage": "download", "job": "J K", "size": 100}',
            b'{"stage": "download", "job": "J\\"", "size": 100}',
            b'{"stage": "download", "job": "", "size": 100}',
            b'{"stage": "download", "job": 7, "size": 100}',
            b'{"stage": "download", "job": "J\\u00e9", "size": 100}',
            b'{"stage": "report", "job": "J", "download": {"job": "J\\nX"}}',
            b'{"stage": "report", "job": "J", "download": [1]}',
        ):
            f = fs.open("job.json", "wb")
            f.write(raw)
            f.close()
            self.assertIsNone(self.j.load(), raw[:60])
        d = {"stage": "report", "job": "J-1_a.b", "download": {"stage": "rolled_back", "job": "K"}}
        self.j.save(d)
        self.assertEqual(self.j.load(), d)

    def test_block_crcs_append_and_reset(self):
        for k in range(40):
            self.j.crc_append(0xDEAD0000 + k)
        self.nor.close()
        self.j = self._open()
        self.assertEqual(self.j.crcs(), [0xDEAD0000 + k for k in range(40)])
        self.j.crc_reset()
        self.assertEqual(self.j.crcs(), [])

    def test_unserialisable_leaves_old(self):
        self.j.save({"stage": 1})
        with self.assertRaises(TypeError):
            self.j.save({"blob": b"bytes are not JSON"})
        self.assertEqual(self.j.load(), {"stage": 1})

    def test_truncate_keeps_the_first_entries(self):
        for k in range(6):
            self.j.crc_append(100 + k)
        self.j.crc_truncate(2)
        self.assertEqual(self.j.crcs(), [100, 101])
        self.j.crc_append(7)
        self.nor.close()
        self.j = self._open()
        self.assertEqual(self.j.crcs(), [100, 101, 7])
        self.j.crc_truncate(0)
        self.assertEqual(self.j.crcs(), [])

    def _ops_of(self, fn):
        before = self.nor.op_count
        fn(self.j)
        return self.nor.op_count - before

    def test_cut_at_every_operation_of_a_save_leaves_old_or_new(self):
        old = {"stage": "download", "job": "J1", "n": 1}
        new = {"stage": "committed", "job": "J1", "slot": 1, "pad": "x" * 200}
        self.j.save(old)
        for k in range(5):
            self.j.crc_append(k)
        self.nor.close()
        base = _file_bytes(self.path)
        self.j = self._open()
        n = self._ops_of(lambda j: j.save(new))
        self.assertGreater(n, 0)
        for op in range(n):
            for byte in (0, 7, 33, 4095):
                self.nor.close()
                _put_file(self.path, base)
                nor = CuttableNOR(self.path, self.SECTORS * 4096)
                j = self._open(nor)
                start = nor.op_count
                nor.cut_at(start + op, byte)
                try:
                    j.save(new)
                except (_Cut, OSError):  # the fs layer turns the cut into EIO
                    pass
                self.assertTrue(nor._dead, "the cut fired")
                nor.close()
                self.j = self._open()
                got = self.j.load()
                self.assertIn(got, (old, new), "cut at op %d byte %d: %r" % (op, byte, got))
                self.assertEqual(self.j.crcs(), [0, 1, 2, 3, 4])

    def test_cut_during_crc_append_keeps_whole_entries(self):
        for k in range(3):
            self.j.crc_append(k)
        self.nor.close()
        base = _file_bytes(self.path)
        self.j = self._open()
        n = self._ops_of(lambda j: j.crc_append(3))
        for op in range(n):
            self.nor.close()
            _put_file(self.path, base)
            nor = CuttableNOR(self.path, self.SECTORS * 4096)
            j = self._open(nor)
            nor.cut_at(nor.op_count + op, 5)
            try:
                j.crc_append(3)
            except (_Cut, OSError):
                pass
            self.assertTrue(nor._dead, "the cut fired")
            nor.close()
            self.j = self._open()
            self.assertIn(self.j.crcs(), ([0, 1, 2], [0, 1, 2, 3]), "cut at op %d" % op)


class TestCRCLog(unittest.TestCase):
    """Block CRCs in raw, program-only flash (rmota.journal.CRCLog)."""

    def setUp(self):
        self.path = _tmp("crclog")
        self.nor = CuttableNOR(self.path, 4 * 4096, create=True)
        self.log = CRCLog(Partition(self.nor, 2, 2))

    def tearDown(self):
        try:
            self.nor.close()
        except Exception:
            pass
        _rm(self.path)

    def test_appends_are_single_programs_without_erases(self):
        log = self.log
        log.reset()
        erases = self.nor.erase_ops
        # two sectors: two areas of one sector, each 1007 entries, 8 joint entries
        # (two words each) and a marker
        self.assertEqual(log.capacity, 1007)
        vals = [0x11223344, 0, 0xDEADBEEF] + list(range(1004))
        for v in vals + [1, 2]:  # the last two: past the capacity, dropped
            log.append(v)
        self.assertEqual(self.nor.erase_ops, erases)
        self.assertEqual(log.programs, len(vals))
        self.assertEqual(log.crcs(), vals)
        self.assertEqual(CRCLog(Partition(self.nor, 2, 2)).crcs(), vals)  # from flash

    def test_reset_erases_only_what_is_dirty_and_truncate_keeps_a_prefix(self):
        log = self.log
        log.reset()
        self.assertEqual(log.erases, 0)  # a blank region is not erased again
        for v in range(5):
            log.append(v + 100)
        log.truncate(2)
        self.assertEqual(log.crcs(), [100, 101])
        log.append(7)
        self.assertEqual(log.crcs(), [100, 101, 7])
        log.truncate(9)  # more than there is: nothing changes
        self.assertEqual(log.crcs(), [100, 101, 7])
        log.reset()
        self.assertEqual(log.crcs(), [])
        self.assertEqual(log.erases, 2)  # truncate's erase and this one; sector 1 blank

    def test_truncate_can_keep_the_entries_ahead_of_a_hole(self):
        # [100, 101, torn] then blocks 5 and 6 written ahead: drop the torn entry,
        # keep the run ahead (a resume after a cut tore an append, agent._resume).
        for nblocks in (2, 1):  # two areas (marker), or one rewritten in place
            log = CRCLog(Partition(self.nor, 2, nblocks))
            log.reset()
            for v in (100, 101, 0x4DE5FFFF):
                log.append(v)
            self.assertTrue(log.put(5, 105))
            self.assertTrue(log.put(6, 106))
            self.assertEqual(log.crcs(), [100, 101, 0x4DE5FFFF])
            log.truncate(2, 5)
            self.assertEqual(log.crcs(), [100, 101])
            self.assertEqual(log.runs(), [(5, [105, 106])])
            again = CRCLog(Partition(self.nor, 2, nblocks))  # from flash
            self.assertEqual((again.crcs(), again.runs()), ([100, 101], [(5, [105, 106])]))
            log.append(102)
            self.assertEqual(log.crcs(), [100, 101, 102])
            log.truncate(3, 3)  # ahead <= n: everything from n on goes
            self.assertEqual(log.runs(), [])

    def _fresh_log(self, entries):
        # A new flash file, the log reset and ``entries`` appended.
        self.nor.close()
        self.nor = CuttableNOR(self.path, 4 * 4096, create=True)
        log = CRCLog(Partition(self.nor, 2, 2))
        log.reset()
        for v in entries:
            log.append(v)
        return log

    def _read_back(self):
        # (entries in order, runs after them) as a new CRCLog reads them from flash.
        again = CRCLog(Partition(NORFlash(self.path, 4 * 4096), 2, 2))
        got = (again.crcs(), again.runs())
        again.bdev.nor.close()
        return got

    def test_a_cut_anywhere_in_a_truncate_leaves_the_old_list_or_the_new(self):
        # The kept entries go to the other area, then its marker: every flash operation
        # of truncate (and of a second one, back to the first area) cut in turn, each
        # at a byte inside it; the list read after is the old one or the new one.
        old = [100 + k for k in range(10)]
        for second in (False, True):
            for k in range(8):
                for byte in (0, 1, 3):
                    log = self._fresh_log(old)
                    before = old
                    if second:
                        log.truncate(8)
                        before = old[:8]
                    self.nor.cut_at(self.nor.op_count + k, byte)
                    try:
                        log.truncate(4)
                    except _Cut:
                        pass
                    got = self._read_back()[0]
                    self.assertIn(got, (before, old[:4]), (second, k, byte))

    def test_move_puts_one_entry_and_drops_others_in_one_step(self):
        # SlotWriter.on_moved: a block moved ahead of a hole is journalled and the next
        # block's entry (not moved yet) dropped together. Every flash operation of it
        # cut in turn, at a byte inside: the list read after is the old one or the new.
        old = [100, 101]
        before = (old, [(6, [206, 207, 208])])
        after = (old, [(5, [205]), (7, [207, 208])])
        seen = set()
        for k in range(8):
            for byte in (0, 2):
                log = self._fresh_log(old)
                for i in (6, 7, 8):
                    self.assertTrue(log.put(i, 200 + i))
                self.nor.cut_at(self.nor.op_count + k, byte)
                try:
                    self.assertTrue(log.move(5, 205, 6, 7))
                except _Cut:
                    pass
                got = self._read_back()
                self.assertIn(got, (before, after), (k, byte))
                seen.add(got == after)
        self.assertEqual(seen, {False, True})  # cuts that kept the old list, and the new
        log = self._fresh_log([])
        ops = (log.programs, log.erases)
        self.assertTrue(log.move(3, 33, 4, 5))  # nothing to drop: one program
        self.assertEqual((log.programs - ops[0], log.erases - ops[1]), (1, 0))
        self.assertTrue(log.move(3, 33, 4, 5))  # holds it already
        self.assertTrue(log.put(4, 44))
        self.assertFalse(log.move(3, 34, 4, 5))  # holds another value: only the drop
        self.assertEqual(log.runs(), [(3, [33])])
        self.assertFalse(Journal(None).crc_move(3, 33, 4, 5))  # no raw CRC log

    def test_a_torn_append_reads_as_a_value_that_matches_no_block(self):
        log = self.log
        log.reset()
        log.append(0x00000000)
        self.nor.cut_at(self.nor.op_count, 2)
        with self.assertRaises(_Cut):
            log.append(0x12345678)
        again = CRCLog(Partition(NORFlash(self.path, 4 * 4096), 2, 2))
        self.assertEqual(again.crcs(), [0, 0xFFFF5678])
        again.bdev.nor.close()

    def test_runs_and_drop(self):
        # Runs of entries after absent ones (blocks ahead of several holes, or the two
        # halves of a move a power cut stopped); drop() forgets a range and keeps the
        # rest, writing nothing when the range is absent already.
        log = self.log
        log.reset()
        for v in (10, 11):
            log.append(v)
        for i, v in ((4, 44), (5, 55), (6, 66), (9, 99), (10, 100), (20, 200)):
            self.assertTrue(log.put(i, v))
        self.assertEqual(log.runs(), [(4, [44, 55, 66]), (9, [99, 100]), (20, [200])])
        p = log.programs
        log.drop(7, 9)  # absent already: nothing written
        self.assertEqual(log.programs, p)
        log.drop(5, 6)  # the middle of a run: it splits
        self.assertEqual(log.crcs(), [10, 11])
        self.assertEqual(log.runs(), [(4, [44]), (6, [66]), (9, [99, 100]), (20, [200])])
        log.drop(9, 10000)  # past the capacity: everything from 9 on
        self.assertEqual(log.runs(), [(4, [44]), (6, [66])])
        again = CRCLog(Partition(self.nor, 2, 2))  # from flash
        self.assertEqual((again.crcs(), again.runs()), ([10, 11], [(4, [44]), (6, [66])]))

    def test_entries_ahead_of_a_hole(self):
        log = self.log
        log.reset()
        for v in (10, 11):
            log.append(v)
        self.assertEqual(log.runs(), [])
        self.assertTrue(log.put(5, 55))
        self.assertTrue(log.put(6, 66))
        self.assertTrue(log.put(6, 66))  # the same value again: nothing to do
        self.assertFalse(log.put(6, 67))  # another value cannot be programmed over it
        self.assertFalse(log.put(5000, 1))
        self.assertEqual(log.crcs(), [10, 11])  # the prefix stops at the hole
        self.assertEqual(log.runs(), [(5, [55, 66])])
        for v in (12, 13, 14, 55):  # the hole filled in order, then block 5 again
            log.append(v)
        self.assertEqual(log.crcs(), [10, 11, 12, 13, 14, 55, 66])
        self.assertEqual(log.runs(), [])
        log.truncate(3)
        self.assertEqual((log.crcs(), log.runs()), ([10, 11, 12], []))
        log.put(8, 88)
        log.truncate(8)  # drops entries past a hole too, keeps the prefix
        self.assertEqual((log.crcs(), log.runs()), ([10, 11, 12], []))
        log.put(9, 99)
        log.truncate(5)
        self.assertEqual((log.crcs(), log.runs()), ([10, 11, 12], []))
        log.put(6, 66)
        log.truncate(9)  # the entry ahead is below 9: kept
        self.assertEqual(log.runs(), [(6, [66])])

    def test_capacity_drops_the_rest(self):
        log = CRCLog(Partition(self.nor, 3, 1))
        log.reset()
        for v in range(1030):
            log.append(v)
        self.assertEqual(log.crcs(), list(range(1008)))  # (and 8 joint entries)

    def test_joint_entries(self):
        # Up to eight (offset, CRC) pairs after the block entries: put into the first free
        # pair, forgotten with zeros programmed over them, kept by truncate (both
        # layouts), untouched by the block entries and their runs.
        for nblocks in (2, 1):
            log = CRCLog(Partition(self.nor, 2, nblocks))
            log.reset()
            for v in (100, 101):
                log.append(v)
            self.assertEqual(log.joints(), [])
            self.assertTrue(log.joint_put(5000, 0xABCD))
            self.assertTrue(log.joint_put(9000, 0x1234))
            log.put(3, 33)
            self.assertEqual(log.joints(), [(5000, 0xABCD), (9000, 0x1234)])
            self.assertEqual((log.crcs(), log.runs()), ([100, 101], [(3, [33])]))
            p = log.programs
            log.joint_drop(5000)
            self.assertEqual(log.programs, p + 1)  # one program, no erase
            self.assertEqual(log.joints(), [(9000, 0x1234)])
            self.assertTrue(log.joint_put(13000, 7))  # not into the forgotten pair
            log.truncate(1, 3)
            again = CRCLog(Partition(self.nor, 2, nblocks))  # from flash
            self.assertEqual(again.crcs(), [100])
            self.assertEqual(again.runs(), [(3, [33])])
            self.assertEqual(again.joints(), [(9000, 0x1234), (13000, 7)])
            self.assertTrue(again.joint_put(1, 1))
            self.assertTrue(again.joint_put(2, 2))  # the pair forgotten before truncate
            for k in range(4):
                self.assertTrue(again.joint_put(10 + k, k))
            self.assertFalse(again.joint_put(3, 3))  # all eight used
            self.assertEqual(len(again.joints()), 8)
            # With none free but one forgotten, the list is written again (one erase;
            # the blocks' and the other joints' entries all stay).
            again.joint_drop(10)
            e = again.erases
            self.assertTrue(again.joint_put(3, 3))
            self.assertEqual(again.erases, e + 1)
            after = CRCLog(Partition(self.nor, 2, nblocks))
            self.assertEqual((after.crcs(), after.runs()), ([100], [(3, [33])]))
            self.assertEqual(
                after.joints(),
                [(9000, 0x1234), (13000, 7), (1, 1), (2, 2), (11, 1), (12, 2), (13, 3), (3, 3)],
            )
            self.assertFalse(after.joint_put(4, 4))  # none forgotten: no rewrite
            again.reset()
            self.assertEqual(again.joints(), [])

    def test_journal_keeps_parks_apart_from_joints(self):
        # Parked blocks share the joint entries, told apart by the offset's top bit.
        part = Partition(self.nor, 0, 2)
        j = Journal(mount(part), crclog=self.log)
        j.crc_reset()
        self.assertTrue(j.joint_put(5000, 0xABCD))
        self.assertTrue(j.park_put(5000, 0x1234))
        self.assertTrue(j.park_put(9000, 0x5678))
        self.assertEqual(j.joints(), [(5000, 0xABCD)])
        self.assertEqual(j.parks(), [(5000, 0x1234), (9000, 0x5678)])
        self.assertEqual(len(self.log.joints()), 3)
        j.park_drop(5000)  # the joint at the same offset stays
        self.assertEqual(j.joints(), [(5000, 0xABCD)])
        self.assertEqual(j.parks(), [(9000, 0x5678)])
        j.crc_truncate(0)
        self.assertEqual(j.parks(), [(9000, 0x5678)])
        j.crc_reset()
        self.assertEqual((j.joints(), j.parks()), ([], []))
        self.assertEqual(Journal(mount(part)).parks(), [])  # no CRC log: none kept

    def test_journal_keeps_its_crcs_in_the_log(self):
        part = Partition(self.nor, 0, 2)
        j = Journal(mount(part), crclog=self.log)
        j.crc_reset()
        j.crc_append(5)
        j.crc_append(6)
        self.assertEqual(j.crcs(), [5, 6])
        self.assertEqual(self.log.crcs(), [5, 6])
        j.crc_truncate(1)
        self.assertEqual(j.crcs(), [5])
        j.clear()
        self.assertEqual(j.crcs(), [])
