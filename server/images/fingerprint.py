"""A cheap perceptual fingerprint of each image, computed at indexing from the pixels already decoded: a 64-bit
difference hash (dHash: a 9×8 greyscale thumbnail, one bit per pair of horizontal neighbours, set when the left one
is brighter) and the image's contrast (the spread of a 16×16 greyscale thumbnail, 0-255).

Near-duplicate detection uses it to confirm what embeddings suggest: two photos close in CLIP space must also differ
in few hash bits. Measured on photos: crops shifted by 2 % of a dark, low-texture photo differ by 12-17 bits,
unrelated photos by 27-45, so `limits.DEFAULT_NEAR_BITS` = 20 keeps bursts together and unrelated look-alikes
apart. Uniform images (all black, all white: contrast below `BLANK_CONTRAST`) have no structure to compare and are
only ever grouped with byte-identical copies.
"""

from dataclasses import dataclass

from PIL import Image

BLANK_CONTRAST = 8
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Perceptual:
    dhash: int  # as SQLite stores it: a signed 64-bit integer
    contrast: int


def perceptual(image: Image.Image) -> Perceptual:
    grey = image.convert("L")
    small = grey.resize((9, 8), Image.Resampling.BILINEAR).tobytes()  # 72 bytes, row by row
    bits = 0
    for row in range(8):
        for column in range(8):
            left, right = small[row * 9 + column], small[row * 9 + column + 1]
            bits = (bits << 1) | (1 if left > right else 0)
    spread = grey.resize((16, 16), Image.Resampling.BILINEAR).getextrema()
    return Perceptual(dhash=bits - (1 << 64) if bits >= 1 << 63 else bits, contrast=int(spread[1]) - int(spread[0]))


def distance(a: int, b: int) -> int:
    """Hamming distance between two stored hashes."""
    return ((a ^ b) & _MASK).bit_count()
