"""littlefs (v2) over a flash partition, the same on-disk format under both runtimes.

Under MicroPython this is the built-in ``vfs.VfsLfs2`` (as on a real board); under
CPython it is PyPI's ``littlefs-python`` with a context that reads, programs and erases
through the partition's extended block-device protocol, configured like MicroPython's
VfsLfs2 (read/prog size 32, lookahead 32) so either runtime can read what the other
wrote. Every flash access goes through the NOR model, so power cuts tear littlefs'
operations exactly as they would on a board.

Usage::

    fs = mount(partition)          # formats a blank partition first
    f = fs.open("job.json", "w"); f.write("{}"); f.close()
"""

try:
    import vfs

    def mount(bdev):
        """Mount littlefs on ``bdev`` (extended block device); format it if it holds
        no filesystem. Returns an object with open/rename/remove/stat."""
        try:
            return vfs.VfsLfs2(bdev)
        except OSError:
            vfs.VfsLfs2.mkfs(bdev)
            return vfs.VfsLfs2(bdev)

except ImportError:  # CPython
    from littlefs import LittleFS
    from littlefs.context import UserContext

    _LFS_ERR_IO = -5

    class _Context(UserContext):
        """Flash access for littlefs-python. An exception must not cross the C library
        (littlefs-python aborts the process): it becomes LFS_ERR_IO, as MicroPython's
        vfs_blockdev does, and littlefs reports an I/O error to the caller."""

        def __init__(self, bdev):  # no RAM buffer: everything goes to the partition
            self.bdev = bdev

        def read(self, cfg, block, off, size):
            # littlefs-python takes no error code from read: an OSError raised here is
            # reported as unraisable and littlefs sees a failed read.
            buf = bytearray(size)
            try:
                self.bdev.readblocks(block, buf, off)
            except BaseException:
                raise OSError(5, "flash read failed") from None
            return buf

        def prog(self, cfg, block, off, data):
            try:
                self.bdev.writeblocks(block, data, off)
            except BaseException:
                return _LFS_ERR_IO
            return 0

        def erase(self, cfg, block):
            try:
                self.bdev.ioctl(6, block)
            except BaseException:
                return _LFS_ERR_IO
            return 0

        def sync(self, cfg):
            return 0

    from littlefs.errors import LittleFSError

    def _oserror(e):
        code = -e.code if getattr(e, "code", None) else 5
        return OSError(code, "littlefs: %s" % e)

    class _File:
        """A littlefs-python file whose errors are ``OSError`` (as on MicroPython) and
        whose failed close is not retried by the garbage collector (a second
        ``lfs_file_close`` aborts the process)."""

        def __init__(self, h):
            self._h = h

        def read(self, *a):
            try:
                return self._h.read(*a)
            except LittleFSError as e:
                raise _oserror(e)

        def write(self, data):
            try:
                return self._h.write(data)
            except LittleFSError as e:
                raise _oserror(e)

        def close(self):
            try:
                self._h.close()
            except LittleFSError as e:
                setattr(self._h, "__IOBase_closed", True)
                raise _oserror(e)

    class _FS:
        """The few filesystem calls the journal uses, over littlefs-python, raising
        ``OSError`` like MicroPython's VfsLfs2."""

        def __init__(self, lfs):
            self._lfs = lfs

        def open(self, path, mode="r"):
            try:
                if "b" not in mode:
                    raise ValueError("binary modes only")
                try:  # unbuffered: the raw handle, whose close we can guard
                    return _File(self._lfs.open(path, mode, buffering=0))
                except FileNotFoundError:
                    if "a" not in mode:
                        raise
                    # littlefs-python's append mode does not create: an empty new file
                    # appended to is the same file
                    return _File(self._lfs.open(path, mode.replace("a", "w"), buffering=0))
            except LittleFSError as e:
                raise _oserror(e)

        def rename(self, a, b):
            try:
                self._lfs.rename(a, b)  # lfs_rename replaces a file atomically
            except LittleFSError as e:
                raise _oserror(e)

        def remove(self, path):
            try:
                self._lfs.remove(path)
            except LittleFSError as e:
                raise _oserror(e)

    def mount(bdev):
        """Mount littlefs on ``bdev``; format it if it holds no filesystem."""
        cfg = dict(
            block_size=bdev.ioctl(5, 0),
            block_count=bdev.ioctl(4, 0),
            read_size=32,
            prog_size=32,
            lookahead_size=32,
        )
        fs = LittleFS(context=_Context(bdev), mount=False, **cfg)
        try:
            fs.mount()
        except LittleFSError:
            try:
                fs.format()
                fs.mount()
            except LittleFSError as e:
                raise _oserror(e)
        return _FS(fs)
