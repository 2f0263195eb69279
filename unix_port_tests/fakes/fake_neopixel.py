# Fake `neopixel`: a pixel buffer that counts write() calls.
class NeoPixel:
    def __init__(self, pin, n):
        self.pin = pin
        self.n = n
        self.px = [(0, 0, 0)] * n
        self.writes = 0

    def __setitem__(self, i, rgb):
        self.px[i] = rgb

    def __getitem__(self, i):
        return self.px[i]

    def __len__(self):
        return self.n

    def write(self):
        self.writes += 1
