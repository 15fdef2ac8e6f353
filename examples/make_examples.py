"""Draws the example images in this folder (our own work, no photos): `python examples/make_examples.py`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).parent
SERIF = "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"
SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return ImageFont.load_default(size=size)


def chart() -> Image.Image:
    image = Image.new("RGB", (640, 440), "white")
    draw = ImageDraw.Draw(image)
    draw.text((320, 24), "Monthly sales, 2025 (units)", fill="black", font=font(SANS, 24), anchor="mm")
    left, bottom, top = 80, 380, 70
    draw.line([(left, top), (left, bottom), (600, bottom)], fill="black", width=2)
    values = {"Jan": 120, "Feb": 135, "Mar": 90, "Apr": 160, "May": 210, "Jun": 185}
    scale = (bottom - top) / 250
    for tick in range(0, 251, 50):
        y = bottom - tick * scale
        draw.line([(left - 6, y), (left, y)], fill="black", width=2)
        draw.text((left - 10, y), str(tick), fill="black", font=font(SANS, 16), anchor="rm")
    for i, (month, value) in enumerate(values.items()):
        x = left + 30 + i * 85
        draw.rectangle([x, bottom - value * scale, x + 50, bottom], fill=(52, 101, 164) if value < 200 else (204, 0, 0))
        draw.text((x + 25, bottom + 16), month, fill="black", font=font(SANS, 16), anchor="mm")
        draw.text((x + 25, bottom - value * scale - 12), str(value), fill="black", font=font(SANS, 14), anchor="mm")
    return image


def formula() -> Image.Image:
    image = Image.new("RGB", (640, 260), (250, 248, 240))
    draw = ImageDraw.Draw(image)
    big, small = font(SERIF, 44), font(SERIF, 26)
    draw.text((320, 50), "The quadratic formula", fill=(60, 60, 60), font=small, anchor="mm")
    draw.text((130, 145), "x =", fill="black", font=big, anchor="mm")
    draw.text((360, 115), "−b ± √(b² − 4ac)", fill="black", font=big, anchor="mm")
    draw.line([(200, 148), (520, 148)], fill="black", width=3)
    draw.text((360, 185), "2a", fill="black", font=big, anchor="mm")
    draw.text((320, 236), "for ax² + bx + c = 0, a ≠ 0", fill=(60, 60, 60), font=small, anchor="mm")
    return image


def scene() -> Image.Image:
    image = Image.new("RGB", (640, 480), (135, 200, 250))
    draw = ImageDraw.Draw(image)
    draw.ellipse([500, 40, 590, 130], fill=(255, 210, 0))  # sun
    draw.rectangle([0, 340, 640, 480], fill=(80, 170, 60))  # grass
    draw.rectangle([160, 220, 360, 360], fill=(240, 230, 200), outline="black", width=2)  # house
    draw.polygon([(140, 220), (260, 130), (380, 220)], fill=(190, 40, 40), outline="black")  # roof
    draw.rectangle([240, 290, 285, 360], fill=(110, 70, 40))  # door
    draw.rectangle([185, 245, 225, 280], fill=(170, 220, 255), outline="black")  # windows
    draw.rectangle([300, 245, 340, 280], fill=(170, 220, 255), outline="black")
    draw.rectangle([470, 260, 495, 360], fill=(120, 80, 40))  # tree
    draw.ellipse([420, 170, 545, 290], fill=(40, 130, 50))
    for x in range(0, 640, 40):  # fence
        draw.rectangle([x + 5, 330, x + 15, 375], fill="white")
    draw.line([(0, 345), (640, 345)], fill="white", width=4)
    draw.ellipse([60, 60, 170, 100], fill="white")  # cloud
    draw.ellipse([100, 45, 200, 95], fill="white")
    return image


def note() -> Image.Image:
    image = Image.new("RGB", (520, 360), (255, 246, 160))
    draw = ImageDraw.Draw(image)
    draw.text((40, 40), "TODO before Friday", fill=(30, 30, 120), font=font(SANS, 30))
    for i, line in enumerate(["1. Book room 204 for 3 pm", "2. Send the Q3 report", "3. Buy coffee beans (2 kg)"]):
        draw.text((50, 110 + i * 60), line, fill=(30, 30, 30), font=font(SANS, 26))
    return image.rotate(4, expand=True, fillcolor=(230, 230, 230))


if __name__ == "__main__":
    for name, make in {"chart": chart, "formula": formula, "scene": scene, "note": note}.items():
        make().save(HERE / f"{name}.png", optimize=True)
        print(HERE / f"{name}.png")
