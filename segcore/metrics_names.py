"""Metric names, defined once: logged by the module, monitored by checkpoints, optimised by the sweep."""
from __future__ import annotations

SWEEP_METRIC = "val/iou"  # two classes: the foreground's IoU (SMP "micro"); more: the mean IoU over classes
SWEEP_MODE = "max"

TRAIN_LOSS = "train/loss"
TRAIN_LOSS_STEP = "train/loss_step"  # each training step's loss, read once per epoch (as Lightning names it)
VAL_PREDICTIONS = "val/predictions"  # image | truth | prediction of the first validation images
VAL_PREDICTIONS_IMAGES = 6  # how many (at most: the first validation batch's)
VAL_PREDICTIONS_PADDING = 2  # pixels around each image of its grid (3 columns: image | truth | prediction)
LEARNING_RATE = "lr"
EPOCH = "epoch"  # epochs completed, reported with every sweep result: ASHA's rungs and Optuna's steps count it
DEVICE_SETUP = "device_setup"  # a sweep trial's device line (segcore.build.describe_device), with its results
DIVERGED = "diverged"  # 1 in the last result of a trial whose loss became NaN / infinite (its val/iou is NaN)


def stage_metric(stage: str, name: str) -> str:
    """``stage_metric("test", "iou") == "test/iou"``: one naming rule for val/ and test/."""
    return f"{stage}/{name}"


# The metrics each evaluation stage logs (as ``<stage>/<name>``): two classes (segcore.metrics.BinarySegMetrics)
EVAL_METRICS = ("loss", "iou", "per_image_iou", "dice", "per_image_dice", "pet_fraction", "true_fraction")
# three or more (segcore.metrics.MultiClassSegMetrics), then ``iou/<class name>`` for each class
MULTICLASS_EVAL_METRICS = ("loss", "iou", "acc", "dice")


def class_metric(class_name: str) -> str:
    """``class_metric("road") == "iou/road"``: a class's IoU (``val/iou/road``)."""
    return f"iou/{class_name}"


def eval_metrics(class_names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The metrics an evaluation logs for these classes (two: binary; more: multi-class, one per class too)."""
    if len(class_names) <= 2:
        return EVAL_METRICS
    return MULTICLASS_EVAL_METRICS + tuple(class_metric(name) for name in class_names)
