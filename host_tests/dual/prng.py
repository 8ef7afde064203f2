"""A small seeded PRNG with the same sequence on CPython and MicroPython (MicroPython's
``random`` has no ``Random`` class). xorshift32."""


class PRNG:
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def next32(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def randint(self, a, b):
        """An int in [a, b], both included."""
        return a + self.next32() % (b - a + 1)
