"""What a checked dataset is, for the plan and the log: where, which layout, the split sizes, the classes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class DataSummary:
    root: Path
    train: int
    val: int
    test: int
    layout: str = "Oxford-IIIT Pet"
    split_source: str = "annotations/trainval.txt + test.txt, val drawn from trainval by val_fraction and the seed"
    classes: Optional[list[str]] = None  # a generic layout's (from its data); None: Pets' (by the config's border)
    encoding: str = "trimaps (1 pet, 2 background, 3 border)"
    train_shares: list[float] = field(default_factory=list)  # each class's share of the training pixels
    warnings: list[str] = field(default_factory=list)
    test_source: str = "test"  # the split the final test reads ("val" where the layout has no test split)

    def plan_lines(self, image_size: int) -> list[str]:
        """What the plan says of the data: layout, split sizes, classes with their share, encoding, warnings."""
        test = f"test {self.test}" if self.test_source == "test" else "no test split (the final test reads val)"
        lines = [f"data {self.root}: {self.layout} layout at {image_size}px: train {self.train}, val {self.val}, "
                 f"{test} ({self.split_source})"]
        if self.classes is not None:
            shares = ", ".join(f"{name} {share:.1%}" for name, share in zip(self.classes, self.train_shares))
            lines += [f"classes ({len(self.classes)}, share of the training pixels): "
                      f"{shares or ', '.join(self.classes)}", f"masks: {self.encoding}"]
        return lines + self.warnings
