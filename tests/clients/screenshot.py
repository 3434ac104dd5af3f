#!/usr/bin/env python3
"""A PNG of a terminal screen: the text `tmux capture-pane -e -p` printed (ANSI SGR escapes
for bold, reverse and colours), drawn cell by cell in DejaVu Sans Mono with Pillow.

  python screenshot.py SCREEN.txt OUT.png [--cols 80] [--rows 24]

Used by tests/tests/top.rs for the README's picture of `agentwatch top`.
"""

import argparse
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 15
FG = (220, 220, 220)
BG = (24, 24, 28)
# The 16 ANSI colours (xterm's defaults, dimmed a little).
PALETTE = [
    (0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16),
    (36, 114, 200), (188, 63, 188), (17, 168, 205), (229, 229, 229),
    (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67),
    (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255),
]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def colour256(n):
    if n < 16:
        return PALETTE[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[n // 6 % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return (v, v, v)


class Style:
    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = None
        self.bg = None
        self.bold = False
        self.reverse = False

    def apply(self, params):
        codes = [int(p) if p else 0 for p in params.split(";")] if params else [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                self.reset()
            elif c == 1:
                self.bold = True
            elif c == 22:
                self.bold = False
            elif c == 7:
                self.reverse = True
            elif c == 27:
                self.reverse = False
            elif 30 <= c <= 37:
                self.fg = PALETTE[c - 30]
            elif 90 <= c <= 97:
                self.fg = PALETTE[c - 90 + 8]
            elif c == 39:
                self.fg = None
            elif 40 <= c <= 47:
                self.bg = PALETTE[c - 40]
            elif 100 <= c <= 107:
                self.bg = PALETTE[c - 100 + 8]
            elif c == 49:
                self.bg = None
            elif c in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    rgb = colour256(codes[i + 2])
                    i += 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    rgb = tuple(codes[i + 2:i + 5])
                    i += 4
                else:
                    rgb = None
                if c == 38:
                    self.fg = rgb
                else:
                    self.bg = rgb
            i += 1

    def colours(self):
        fg, bg = self.fg or FG, self.bg or BG
        return (bg, fg) if self.reverse else (fg, bg)


def cells(text, cols, rows):
    """Rows of (char, fg, bg, bold) cells, `cols` wide and `rows` high."""
    style = Style()
    out = []
    for line in text.split("\n")[:rows]:
        row = []
        pos = 0
        for m in SGR.finditer(line + "\x1b[m"):
            for ch in line[pos:m.start()]:
                if ch >= " " and len(row) < cols:
                    fg, bg = style.colours()
                    row.append((ch, fg, bg, style.bold))
            style.apply(m.group(1))
            pos = m.end()
        while len(row) < cols:
            row.append((" ", FG, BG, False))
        out.append(row)
    while len(out) < rows:
        out.append([(" ", FG, BG, False)] * cols)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("screen")
    ap.add_argument("png")
    ap.add_argument("--cols", type=int, default=80)
    ap.add_argument("--rows", type=int, default=24)
    args = ap.parse_args()
    with open(args.screen, encoding="utf-8", errors="replace") as f:
        text = f.read()
    font = ImageFont.truetype(FONT, SIZE)
    bold = ImageFont.truetype(BOLD, SIZE)
    cw = round(font.getlength("M"))
    ch = SIZE + 5
    pad = 8
    img = Image.new("RGB", (args.cols * cw + 2 * pad, args.rows * ch + 2 * pad), BG)
    draw = ImageDraw.Draw(img)
    for y, row in enumerate(cells(text, args.cols, args.rows)):
        for x, (c, fg, bg, b) in enumerate(row):
            x0, y0 = pad + x * cw, pad + y * ch
            if bg != BG:
                draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=bg)
            if c != " ":
                draw.text((x0, y0 + 2), c, font=bold if b else font, fill=fg)
    img.save(args.png)
    print(f"{args.png}: {img.width}x{img.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
