"""An in-memory UART for tests (both runtimes): ``feed(bytes)`` queues what the ESP says,
``tx`` collects what the host wrote, ``on_write(data)`` (optional) can answer. ``chunk``
caps the bytes returned per ``readinto`` (to exercise splits)."""


class FakeUART:
    def __init__(self, chunk=None):
        self.rx = bytearray()
        self.tx = bytearray()
        self.chunk = chunk
        self.on_write = None
        self.closed = False

    def feed(self, data):
        self.rx.extend(data)

    def any(self):
        return len(self.rx)

    def readinto(self, buf, nbytes=None):
        if not self.rx:
            return 0 if self.closed else None
        n = len(buf) if nbytes is None else nbytes
        if self.chunk and n > self.chunk:
            n = self.chunk
        if n > len(self.rx):
            n = len(self.rx)
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def read(self, n=-1):
        if not self.rx:
            return None
        if n < 0 or n > len(self.rx):
            n = len(self.rx)
        d = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return d

    def write(self, data):
        data = bytes(data)
        self.tx.extend(data)
        if self.on_write:
            self.on_write(data)
        return len(data)
