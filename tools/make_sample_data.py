"""Write the bundled sample dataset: drawn shape images and conversations about them.

    python tools/make_sample_data.py --out DIR

DIR gets images/*.png, train.json (single-image, multi-turn, multi-image and text-only
samples, relative image paths), eval.json (the question about each of the six images) and
pairs.json (preference pairs in RLAIF-V's columns: the question about each image, the right
answer chosen, the next image's colour rejected). Small enough to memorise on CPU in minutes.
"""
import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle"),
          ("purple", "square"), ("orange", "triangle")]
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 210, 20),
           "purple": (140, 40, 170), "orange": (250, 140, 20)}


def draw(colour: str, shape: str, size=(480, 360)) -> Image.Image:
    image = Image.new("RGB", size, (245, 245, 240))
    pen = ImageDraw.Draw(image)
    w, h = size
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        side = min(box[2] - box[0], box[3] - box[1])
        pen.rectangle((box[0], box[1], box[0] + side, box[1] + side), fill=fill)
    else:
        pen.polygon([(w // 2, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)], fill=fill)
    return image


def samples():
    train = []
    for i, (colour, shape) in enumerate(SHAPES):
        name = f"images/{colour}_{shape}.png"
        train.append({"id": f"shape-{i}", "image": name, "conversations": [
            {"role": "user", "content": "<image>\nWhat is in the picture?"},
            {"role": "assistant", "content": f"A {colour} {shape}."}]})
        train.append({"id": f"colour-{i}", "image": name, "conversations": [
            {"role": "user", "content": "What colour is the shape?"},
            {"role": "assistant", "content": f"It is {colour}."},
            {"role": "user", "content": "And which shape is it?"},
            {"role": "assistant", "content": f"A {shape}."}]})
    train.append({"id": "pair", "image": {"<image_00>": "images/red_circle.png", "<image_01>": "images/blue_square.png"},
                  "conversations": [{"role": "user", "content": "<image_00><image_01>\nWhich two shapes are these?"},
                                    {"role": "assistant", "content": "A red circle and a blue square."}]})
    train.append({"id": "text", "conversations": [{"role": "user", "content": "How many sides does a square have?"},
                                                  {"role": "assistant", "content": "Four."}]})
    # the eval set asks about each training image: a result that sees answers all six right
    return train, [sample for sample in train if sample["id"].startswith("shape-")]


def preference_pairs():
    """Per image: the right answer chosen over the same shape in the next image's colour."""
    return [{"id": f"pair-{i}", "image": f"images/{colour}_{shape}.png", "question": "What is in the picture?",
             "chosen": f"A {colour} {shape}.", "rejected": f"A {SHAPES[(i + 1) % len(SHAPES)][0]} {shape}."}
            for i, (colour, shape) in enumerate(SHAPES)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for colour, shape in SHAPES:
        draw(colour, shape).save(out / "images" / f"{colour}_{shape}.png")
    train, evaluation = samples()
    (out / "train.json").write_text(json.dumps(train, indent=1, ensure_ascii=False))
    (out / "eval.json").write_text(json.dumps(evaluation, indent=1, ensure_ascii=False))
    pairs = preference_pairs()
    (out / "pairs.json").write_text(json.dumps(pairs, indent=1, ensure_ascii=False))
    print(f"wrote {len(train)} training and {len(evaluation)} eval samples and {len(pairs)} preference pairs to {out}")


if __name__ == "__main__":
    main()
