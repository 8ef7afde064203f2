"""A RAM block device with NOR semantics, for tests and benchmarks (both runtimes).

Extended block-device protocol: ``readblocks(n, buf, off=0)``, ``writeblocks(n, buf,
off=0)`` (program: new = old AND data, never erases), ``ioctl(4|5|6, arg)``. Counts
``erase_counts`` per block and ``programs``. ``sabotage_skip_erase`` (a block number)
makes ``ioctl(6, that block)`` do nothing once: a test hook for "a missing erase must be
caught"."""


class RAMNOR:
    def __init__(self, blocks, block_size=4096, fill=0xFF):
        self.bs = block_size
        self.n = blocks
        self.mem = bytearray(bytes([fill]) * (blocks * block_size))
        self.erase_counts = [0] * blocks
        self.programs = 0
        self.sabotage_skip_erase = None

    def readblocks(self, blk, buf, off=0):
        a = blk * self.bs + off
        if blk < 0 or a + len(buf) > len(self.mem):
            raise OSError(22)
        buf[:] = self.mem[a : a + len(buf)]

    def writeblocks(self, blk, buf, off=0):
        a = blk * self.bs + off
        if blk < 0 or a + len(buf) > len(self.mem):
            raise OSError(22)
        m = self.mem
        for k in range(len(buf)):
            m[a + k] &= buf[k]
        self.programs += 1

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            if arg < 0 or arg >= self.n:
                raise OSError(22)
            if self.sabotage_skip_erase == arg:
                self.sabotage_skip_erase = None
                return 0
            a = arg * self.bs
            for k in range(a, a + self.bs):
                self.mem[k] = 0xFF
            self.erase_counts[arg] += 1
            return 0
        return 0
