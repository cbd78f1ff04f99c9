"""Which dataset a folder holds, checked and decoded: a generic layout of images and masks (segcore.data.layouts,
segcore.data.generic) or Oxford-IIIT Pet's own (segcore.data.pets). Every caller (segcore-train, a sweep's driver,
the final test) goes through ``check_dataset``, so both kinds reach the model as the same two decoded splits:

- ``trainval``: the training and validation images (Pets': one list that ``val_fraction`` and the seed divide; a
  generic layout's: its train split then its val split, ``DecodedSplit.n_train`` apart);
- ``test``: the test split (a generic layout without one: its val split, said in the plan).

A generic layout's splits carry the table from its stored values to its classes (``DecodedSplit.lut``), applied
per batch. Both kinds are memory-mapped from the decoded cache on this machine's disk (segcore.data.decoded). No
torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from segcore.data.decoded import DecodedSplit
from segcore.data.summary import DataSummary
from segcore.errors import UserError

SPLIT_FILES = ("trainval", "test")


def dataset_complete(data_dir: str | os.PathLike) -> bool:
    """Whether every file the layout lists is there (no problem found without reading an image)."""
    from segcore.data.layouts import find_layout
    from segcore.data.pets import layout_complete

    layout = find_layout(data_dir)
    return layout_complete(data_dir) if layout is None else not layout.problems


def find_dataset(data_dir: str | os.PathLike) -> Path:
    """The dataset's root; UserError naming the layouts when ``data_dir`` holds none."""
    from segcore.data.layouts import find_layout
    from segcore.data.pets import find_root

    layout = find_layout(data_dir) if Path(data_dir).is_dir() else None
    if layout is not None:
        return layout.root
    try:
        return find_root(data_dir)
    except UserError as err:
        raise UserError(f"{err.args[0]}; nor images/ + masks/, train/ val/ test/ with images/ + masks/, or "
                        "img_dir/ + ann_dir/ (a folder of your own: README, 'Your own data')") from None


def check_dataset(data_dir: str | os.PathLike, image_size: int, val_fraction: float, test_fraction: float, seed: int,
                  decoded: dict[str, DecodedSplit], splits: tuple[str, ...] = SPLIT_FILES) -> DataSummary:
    """Read, check and decode every split of ``splits`` not yet in ``decoded`` (added to it): all problems in one
    UserError, before anything expensive."""
    from segcore.data.layouts import find_layout

    layout = find_layout(data_dir, val_fraction, test_fraction, seed) if Path(data_dir).is_dir() else None
    if layout is None:
        from segcore.data.pets import check_splits

        return check_splits(data_dir, image_size, val_fraction, seed, decoded, splits)
    from segcore.data.generic import check_generic

    data = check_generic(layout, image_size)
    train, val = data.decoded["train"], data.decoded["val"]
    test = data.decoded.get("test")
    if "trainval" in splits and "trainval" not in decoded:
        decoded["trainval"] = data.decoded["trainval"]
    if "test" in splits and "test" not in decoded:
        decoded["test"] = test if test is not None else val
    return DataSummary(layout.root, len(train), len(val), len(test) if test is not None else len(val),
                       layout=layout.kind, split_source=layout.split_source, classes=data.class_names,
                       encoding=data.encoding, train_shares=data.train_shares, warnings=data.warnings,
                       test_source="test" if test is not None else "val")


def classes_for(asked: list[str] | None, summary: DataSummary, data_dir) -> list[str] | None:
    """The config's ``classes`` for this data: a generic layout's (as its data names them), None for Pets (its
    classes follow ``border``). A config that names other classes than the data's is refused."""
    if summary.classes is None:
        if asked is not None:
            raise UserError(f"key 'classes': Oxford-IIIT Pet ({data_dir}) has its classes by 'border' "
                            "(pet / background / ignore: two classes; class: three); leave 'classes' out")
        return None
    if asked is not None and list(asked) != summary.classes:
        raise UserError(f"key 'classes': {asked} differ from the classes of {data_dir}: {summary.classes}")
    return summary.classes
