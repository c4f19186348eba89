"""A generated corpus for text recognition, the same for every seed: images with their ground-truth lines.

    python -m bench.ocr_corpus /tmp/ocr-corpus [--seed 22] [--per-kind 12]

Kinds: `photo` (1-3 lines, 12-80 px tall, rotated up to ±10°, over gradients, noise and shapes, blurred, JPEG),
`screenshot` (UI text on flat colours, 1080x2340 and 1280x800, PNG), `document` (paragraphs on paper, JPEG),
`chinese` (simplified Chinese lines, photo-like or flat) and `none` (photo-like, no text). Each line records its text,
its words and its height in pixels (the rendered glyphs' extent, before rotation). Fonts: DejaVu and Liberation
(Debian `fonts-dejavu-core fonts-liberation`), WenQuanYi Zen Hei or Noto CJK for Chinese.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
LATIN_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSans-Bold.ttf",
    "LiberationSerif-Regular.ttf",
    "LiberationMono-Regular.ttf",
    "LiberationSansNarrow-Regular.ttf",
)
CJK_FONTS = ("wqy-zenhei.ttc", "NotoSansCJK-Regular.ttc", "wqy-microhei.ttc")
KINDS = ("photo", "screenshot", "document", "chinese", "none")

_WORDS = (
    "boarding pass gate seat flight departure arrival terminal ticket receipt total cash card change thank you "
    "welcome wifi password network guest invoice order number date time menu coffee latte croissant sandwich salad "
    "water price market street station platform exit entrance open closed parking hotel room floor meeting agenda "
    "notes project budget report summary account balance payment transfer reference customer service delivery "
    "address phone email museum garden bakery pharmacy library school office airport train bus taxi north south "
    "café crème déjà straße müller über señor größe naïve"
)
WORDS = tuple(_WORDS.split())
CODES = ("LH 1234", "BA 0451", "AF 7702", "KL 1806", "Gate B22", "Seat 14C", "Row 7", "No. 48213", "€ 12,90", "$ 7.50")
_CHINESE = (
    "登机牌 航班 座位 出发 到达 收据 合计 现金 欢迎 光临 密码 网络 菜单 咖啡 地铁 车站 出口 入口 营业 时间 "
    "停车场 酒店 房间 会议 报告 账户 付款 客户 服务 地址 电话 博物馆 花园 面包店 药店 图书馆 学校 机场 火车"
)
CHINESE = tuple(_CHINESE.split())
UI_LABELS = ("Settings", "Wi-Fi", "Bluetooth", "Battery", "Messages", "Today", "Inbox", "Search", "Cancel", "Done")


@dataclass
class Line:
    text: str
    words: list[str]
    height: int  # pixels, the rendered glyphs' extent before rotation
    font: str


@dataclass
class Sample:
    name: str
    kind: str
    width: int
    height: int
    lines: list[Line] = field(default_factory=list)

    @property
    def has_text(self) -> bool:
        return bool(self.lines)


def find_font(names: tuple[str, ...]) -> list[Path]:
    found = []
    for name in names:
        for folder in FONT_DIRS:
            hits = sorted(folder.rglob(name)) if folder.is_dir() else []
            if hits:
                found.append(hits[0])
                break
    return found


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.latin = find_font(LATIN_FONTS)
        self.cjk = find_font(CJK_FONTS)
        if not self.latin:
            raise SystemExit("No DejaVu or Liberation fonts: apt-get install fonts-dejavu-core fonts-liberation")
        self._fonts: dict[tuple[Path, int], ImageFont.FreeTypeFont] = {}

    def font(self, path: Path, size: int) -> ImageFont.FreeTypeFont:
        key = (path, size)
        if key not in self._fonts:
            self._fonts[key] = ImageFont.truetype(str(path), size)
        return self._fonts[key]

    # Backgrounds
    def photo_background(self, width: int, height: int) -> Image.Image:
        rng = self.np
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        pixels = top * (1 - ramp) + bottom * ramp + np.zeros((1, width, 1), np.float32)
        # Low-frequency blotches, as in foliage, sky and walls, plus sensor noise.
        coarse = rng.normal(0, 40, (max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
        coarse_img = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        pixels += np.asarray(coarse_img, np.float32) - 128
        pixels += rng.normal(0, 6, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(self.rng.randint(3, 12)):
            x0, y0 = self.rng.randrange(width), self.rng.randrange(height)
            x1, y1 = x0 + self.rng.randint(20, width // 2), y0 + self.rng.randint(20, height // 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = self.rng.choice(("ellipse", "rectangle", "line"))
            if shape == "ellipse":
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            elif shape == "rectangle":
                draw.rectangle((x0, y0, x1, y1), fill=colour)
            else:
                draw.line((x0, y0, x1, y1), fill=colour, width=self.rng.randint(2, 12))
        return image.filter(ImageFilter.GaussianBlur(self.rng.uniform(1.0, 3.0)))

    # Text
    def latin_phrase(self, low: int = 1, high: int = 4) -> str:
        words = [self.rng.choice(WORDS) for _ in range(self.rng.randint(low, high))]
        if self.rng.random() < 0.5:
            words = [w.upper() for w in words] if self.rng.random() < 0.3 else [w.capitalize() for w in words]
        if self.rng.random() < 0.35:
            words.insert(self.rng.randrange(len(words) + 1), self.rng.choice(CODES))
        return " ".join(words)

    def chinese_phrase(self) -> tuple[str, list[str]]:
        words = [self.rng.choice(CHINESE) for _ in range(self.rng.randint(2, 4))]
        return "".join(words), words

    def stamp(
        self,
        image: Image.Image,
        text: str,
        words: list[str],
        font_path: Path,
        size: int,
        at: tuple[int, int],
        colour: tuple[int, ...],
        angle: float,
        box: tuple[int, ...] | None = None,
    ) -> Line | None:
        """Draws `text` rotated by `angle` with its top left near `at`; None when it would not fit."""
        font = self.font(font_path, size)
        left, top, right, bottom = font.getbbox(text)
        pad = size // 2
        layer = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
        ImageDraw.Draw(layer).text((pad - left, pad - top), text, font=font, fill=255)
        rotated = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        x, y = at
        if x + rotated.width > image.width or y + rotated.height > image.height:
            return None
        if box is not None:  # a plate behind the text: a sign, a label
            ImageDraw.Draw(image).rectangle((x, y, x + rotated.width, y + rotated.height), fill=box)
        image.paste(Image.new("RGB", rotated.size, colour), (x, y), rotated)
        return Line(text, words, bottom - top, font_path.name)

    def contrasting(self, background: tuple[int, ...]) -> tuple[int, ...]:
        light = sum(background[:3]) / 3 > 127
        base = self.rng.randint(0, 60) if light else self.rng.randint(200, 255)
        return (
            (base, base, base)
            if self.rng.random() < 0.6
            else tuple(max(0, min(255, base + self.rng.randint(-40, 40))) for _ in range(3))
        )

    def photo(self, name: str, chinese: bool = False) -> tuple[Image.Image, Sample]:
        width, height = self.rng.choice(((1280, 960), (960, 1280), (1600, 1200), (1024, 768)))
        image = self.photo_background(width, height)
        sample = Sample(name, "chinese" if chinese else "photo", width, height)
        y = self.rng.randint(10, height // 4)
        for _ in range(self.rng.randint(1, 3)):
            # Log-uniform, as text in photos is more often small than large.
            size = round(12 * (84 / 12) ** self.rng.random())
            if chinese:
                text, words = self.chinese_phrase()
                font = self.rng.choice(self.cjk)
            else:
                text = self.latin_phrase()
                words = text.split()
                font = self.rng.choice(self.latin)
            plate = None
            if self.rng.random() < 0.6:
                plate = tuple(int(c) for c in self.np.integers(0, 256, 3))
                colour = self.contrasting(plate)
            else:
                x, yy = min(width - 1, 20), min(height - 1, y + size // 2)
                colour = self.contrasting(image.getpixel((x, yy)))  # type: ignore[arg-type]
            x = self.rng.randint(10, max(11, width // 3))
            line = self.stamp(image, text, words, font, size, (x, y), colour, self.rng.uniform(-10, 10), plate)
            if line is not None:
                sample.lines.append(line)
                y += int(size * 2.2) + self.rng.randint(0, height // 6)
            if y > height * 0.85:
                break
        image = image.filter(ImageFilter.GaussianBlur(self.rng.uniform(0.0, 1.2)))
        return image, sample

    def none(self, name: str) -> tuple[Image.Image, Sample]:
        width, height = self.rng.choice(((1280, 960), (960, 1280), (1600, 1200), (1024, 768)))
        image = self.photo_background(width, height).filter(ImageFilter.GaussianBlur(self.rng.uniform(0.0, 1.2)))
        return image, Sample(name, "none", width, height)

    def screenshot(self, name: str) -> tuple[Image.Image, Sample]:
        width, height = self.rng.choice(((1080, 2340), (1280, 800), (1170, 2532)))
        dark = self.rng.random() < 0.3
        background = (20, 20, 24) if dark else (248, 248, 250)
        ink = (235, 235, 235) if dark else (25, 25, 30)
        image = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(image)
        sample = Sample(name, "screenshot", width, height)
        scale = width / 1080
        fonts = [f for f in self.latin if "Sans" in f.name and "Mono" not in f.name] or self.latin
        font = self.rng.choice(fonts)
        bar = (0, 0, width, int(110 * scale))
        draw.rectangle(bar, fill=(60, 110, 220) if not dark else (40, 40, 48))
        title = self.rng.choice(UI_LABELS)
        line = self.stamp(
            image, title, [title], font, int(44 * scale), (int(40 * scale), int(30 * scale)), (255, 255, 255), 0.0
        )
        if line:
            sample.lines.append(line)
        y = int(150 * scale)
        while y < height - 120 * scale:
            size = int(self.rng.choice((14, 16, 20, 24, 28, 32, 40)) * scale)
            if self.rng.random() < 0.3:
                text = f"{self.rng.choice(('Password', 'Code', 'Booking', 'PIN'))}: " + "".join(
                    self.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(self.rng.randint(6, 10))
                )
            else:
                text = self.latin_phrase(2, 6)
            line = self.stamp(image, text, text.split(), font, size, (int(40 * scale), y), ink, 0.0)
            if line:
                sample.lines.append(line)
            y += int(size * 1.9)
            if self.rng.random() < 0.25:
                draw.line((0, y, width, y), fill=(200, 200, 205) if not dark else (60, 60, 66), width=2)
                y += int(20 * scale)
        return image, sample

    def document(self, name: str) -> tuple[Image.Image, Sample]:
        width, height = self.rng.choice(((1240, 1754), (1000, 1414)))
        paper = tuple(self.rng.randint(225, 255) for _ in range(3))
        image = Image.new("RGB", (width, height), paper)
        sample = Sample(name, "document", width, height)
        font = self.rng.choice(self.latin)
        size = self.rng.choice((16, 18, 20, 22, 26))
        margin = int(width * 0.1)
        y = margin
        heading = self.latin_phrase(2, 4).title()
        line = self.stamp(image, heading, heading.split(), font, int(size * 1.6), (margin, y), (10, 10, 10), 0.0)
        if line:
            sample.lines.append(line)
        y += int(size * 3.5)
        ttf = self.font(font, size)
        while y < height - margin - size * 2:
            words: list[str] = []
            while True:
                word = self.rng.choice(WORDS) if self.rng.random() > 0.1 else self.rng.choice(CODES)
                if ttf.getlength(" ".join([*words, word])) > width - 2 * margin:
                    break
                words.append(word)
            text = " ".join(words)
            line = self.stamp(image, text, text.split(), font, size, (margin, y), (15, 15, 15), 0.0)
            if line:
                sample.lines.append(line)
            y += int(size * 1.6)
            if self.rng.random() < 0.15:
                y += size * 2  # a new paragraph
        # A slight tilt and the phone's blur, as in a photo of a page.
        image = image.rotate(self.rng.uniform(-2, 2), resample=Image.Resampling.BICUBIC, fillcolor=paper)
        return image.filter(ImageFilter.GaussianBlur(self.rng.uniform(0.0, 0.8))), sample

    def chinese(self, name: str) -> tuple[Image.Image, Sample]:
        if not self.cjk:
            raise SystemExit("No CJK font: apt-get install fonts-wqy-zenhei (or fonts-noto-cjk)")
        return self.photo(name, chinese=True)


def generate(folder: Path, seed: int = 22, per_kind: int = 12, none_count: int | None = None) -> list[Sample]:
    """Writes the corpus into `folder` (PNG for screenshots, JPEG at quality 60-92 otherwise) and returns it; the
    ground truth is also written to `folder/truth.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = Generator(seed)
    counts = {"photo": per_kind * 2, "screenshot": per_kind, "document": max(1, per_kind // 2), "chinese": per_kind}
    counts["none"] = none_count if none_count is not None else sum(counts.values())
    samples = []
    for kind in KINDS:
        for index in range(counts[kind]):
            name = f"{kind}-{index:03d}"
            image, sample = getattr(gen, kind)(name)
            if kind == "screenshot":
                sample.name = name + ".png"
                image.save(folder / sample.name)
            else:
                sample.name = name + ".jpg"
                image.save(folder / sample.name, quality=gen.rng.randint(60, 92))
            samples.append(sample)
    truth = [{**asdict(s), "has_text": s.has_text} for s in samples]
    (folder / "truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1), encoding="utf-8")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--per-kind", type=int, default=12)
    args = parser.parse_args()
    samples = generate(args.folder, args.seed, args.per_kind)
    print(f"{len(samples)} images, {sum(len(s.lines) for s in samples)} lines in {args.folder}")


if __name__ == "__main__":
    main()
