"""The names every layer shares, in one torch-free place: stages and their input sizes, sample
labels, loss parts, and the optimizer, schedule and metric names configs may use.

The registries that implement the names (``mtcnn.train.optim``) are checked against them by the
tests, so a name added in one place and not the other fails there, not in a user's run.
"""

from __future__ import annotations

#: Input window side in pixels for each stage, in cascade order.
INPUT_SIZES = {"pnet": 12, "rnet": 24, "onet": 48}
STAGES = tuple(INPUT_SIZES)
#: The earlier stages whose nets mine each stage's training samples (P-Net's are cut at random).
EARLIER_STAGES = {"pnet": (), "rnet": ("pnet",), "onet": ("pnet", "rnet")}
#: How the stages are named in logs and reports.
STAGE_NAMES = {"pnet": "P-Net", "rnet": "R-Net", "onet": "O-Net"}

#: Sample labels in a store: a face (IoU >= 0.65), background (< 0.3), part of a face
#: (0.4-0.65, trains box regression only) and a landmark face (trains the five points only).
LABEL_POSITIVE = 1
LABEL_NEGATIVE = 0
LABEL_PART = -1
LABEL_LANDMARK = -2
LABEL_NAMES = {LABEL_POSITIVE: "positive", LABEL_NEGATIVE: "negative", LABEL_PART: "part", LABEL_LANDMARK: "landmark"}

#: Image file suffixes read from folders (detection inputs, YOLO sets).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: The three tasks of the loss, in the order of the task weights.
LOSS_PARTS = ("classification", "box", "landmark")

#: The gradient-descent family by name (their settings: ``mtcnn.config.OPTIMIZER_SETTINGS``).
OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
#: Learning-rate schedules by name (their settings: ``mtcnn.config.SCHEDULE_SETTINGS``).
SCHEDULE_NAMES = ("constant", "step", "multistep", "exponential", "cosine", "plateau")

#: Metrics a run can keep its best checkpoint by, and whether each is minimised or maximised.
METRIC_MODES = {
    "val_loss": "min",
    "val_accuracy": "max",
    "val_recall": "max",
    "val_precision": "max",
    "val_f1": "max",
    "val_box_error": "min",
    "val_landmark_error": "min",
    "train_loss": "min",
}
TRAIN_METRICS = tuple(METRIC_MODES)
