"""Draw docs/images/comfyui_node.png: the "B4M LoRA loader" node in a small ComfyUI-like workflow.

A drawing made with Pillow from the node's own input list (not a screenshot: ComfyUI does not run on b4m's CI).
Run from the repository root: ``python integrations/comfyui/draw_node.py``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parents[2] / "docs" / "images" / "comfyui_node.png"
BG, NODE, TITLE, WIDGET, TEXT, DIM = "#1e1e1e", "#353535", "#2a2a2a", "#222222", "#dddddd", "#999999"
TYPE_COLOURS = {
    "MODEL": "#b39ddb",
    "CLIP": "#ffd500",
    "VAE": "#ff6e6e",
    "LATENT": "#ff9cf9",
    "CONDITIONING": "#ffa931",
}
ROW = 30


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _node(draw, x, y, w, title, inputs=(), outputs=(), widgets=(), accent=None):
    """A node box; returns the socket positions ``{("in"|"out", name): (x, y)}``."""
    h = 34 + ROW * max(len(inputs), len(outputs)) + ROW * len(widgets) + 12
    draw.rounded_rectangle((x, y, x + w, y + h), 10, fill=NODE, outline=accent or "#555555", width=2)
    draw.rounded_rectangle((x, y, x + w, y + 32), 10, fill=TITLE)
    draw.rectangle((x, y + 20, x + w, y + 32), fill=TITLE)
    draw.ellipse((x + 12, y + 11, x + 22, y + 21), fill=accent or "#888888")
    draw.text((x + 30, y + 7), title, fill=TEXT, font=_font(17))
    sockets = {}
    for i, (name, kind) in enumerate(inputs):
        cy = y + 34 + ROW * i + ROW // 2
        draw.ellipse((x - 6, cy - 6, x + 6, cy + 6), fill=TYPE_COLOURS[kind])
        draw.text((x + 14, cy - 9), name, fill=TEXT if "optional" not in name else DIM, font=_font(15))
        sockets["in", name.split()[0]] = (x, cy)
    for i, kind in enumerate(outputs):
        cy = y + 34 + ROW * i + ROW // 2
        draw.ellipse((x + w - 6, cy - 6, x + w + 6, cy + 6), fill=TYPE_COLOURS[kind])
        label = _font(15)
        draw.text((x + w - 14 - draw.textlength(kind, font=label), cy - 9), kind, fill=TEXT, font=label)
        sockets["out", kind] = (x + w, cy)
    top = y + 34 + ROW * max(len(inputs), len(outputs))
    for i, (name, value) in enumerate(widgets):
        wy = top + ROW * i + 3
        draw.rounded_rectangle((x + 10, wy, x + w - 10, wy + ROW - 6), 11, fill=WIDGET)
        draw.text((x + 24, wy + 4), name, fill=DIM, font=_font(14))
        font = _font(14)
        draw.text((x + w - 26 - draw.textlength(value, font=font), wy + 4), value, fill=TEXT, font=font)
    return sockets


def _wire(draw, a, b, kind):
    (x0, y0), (x1, y1) = a, b
    mid = (x0 + x1) / 2
    points = []
    for i in range(41):  # a cubic Bezier, as ComfyUI draws its links
        t = i / 40
        bx = (1 - t) ** 3 * x0 + 3 * (1 - t) ** 2 * t * mid + 3 * (1 - t) * t**2 * mid + t**3 * x1
        by = (1 - t) ** 3 * y0 + 3 * (1 - t) ** 2 * t * y0 + 3 * (1 - t) * t**2 * y1 + t**3 * y1
        points.append((bx, by))
    draw.line(points, fill=TYPE_COLOURS[kind], width=3)


def draw(out: Path = OUT) -> Path:
    img = Image.new("RGB", (1580, 430), BG)
    d = ImageDraw.Draw(img)
    for gx in range(0, img.width, 40):  # the canvas grid
        d.line((gx, 0, gx, img.height), fill="#242424")
    for gy in range(0, img.height, 40):
        d.line((0, gy, img.width, gy), fill="#242424")
    ckpt = _node(d, 30, 60, 320, "Load Checkpoint", outputs=("MODEL", "CLIP", "VAE"),
                 widgets=[("ckpt_name", "sdxl_base.safetensors")])  # fmt: skip
    b4m = _node(
        d, 420, 60, 400, "B4M LoRA loader",
        inputs=[("model", "MODEL"), ("clip (optional)", "CLIP")],
        outputs=("MODEL", "CLIP"),
        widgets=[("lora_name", "teddy_paper.safetensors"), ("content_strength", "1.00"),
                 ("style_strength", "0.60")],
        accent="#4caf50",
    )  # fmt: skip
    sampler = _node(d, 1260, 60, 290, "KSampler", inputs=[("model", "MODEL"), ("positive", "CONDITIONING")],
                    outputs=("LATENT",), widgets=[("steps", "25"), ("cfg", "5.0")])  # fmt: skip
    text = _node(d, 880, 200, 330, "CLIP Text Encode (Prompt)", inputs=[("clip", "CLIP")],
                 outputs=("CONDITIONING",), widgets=[("text", "a snq teddy in wzk papercut style")])  # fmt: skip
    _wire(d, ckpt["out", "MODEL"], b4m["in", "model"], "MODEL")
    _wire(d, ckpt["out", "CLIP"], b4m["in", "clip"], "CLIP")
    _wire(d, b4m["out", "MODEL"], sampler["in", "model"], "MODEL")
    _wire(d, b4m["out", "CLIP"], text["in", "clip"], "CLIP")
    _wire(d, text["out", "CONDITIONING"], sampler["in", "positive"], "CONDITIONING")
    d.text(
        (30, img.height - 34),
        "A drawing of the node (integrations/comfyui/draw_node.py), not a screenshot. content_strength scales the "
        "content part B, style_strength the style part D; CLIP passes through unchanged.",
        fill=DIM,
        font=_font(14),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(draw())
