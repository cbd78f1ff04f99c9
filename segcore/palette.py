"""The colours classes are drawn in: overlays in TensorBoard and the report, and the palette PNGs written by
``segcore.predict``. PASCAL VOC's colour map (also MMSegmentation's and torchvision's default for VOC): class 0
black, then well-separated colours, the same for any number of classes up to 256."""
from __future__ import annotations


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """The first ``n`` colours of PASCAL VOC's colour map (bits of the class index spread over R, G and B)."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours


def flat_palette() -> list[int]:
    """PIL's palette for a 'P' image: 256 entries of the colour map, 255 (ignore) white."""
    colours = class_colours(256)
    colours[255] = (255, 255, 255)
    return [v for colour in colours for v in colour]
