"""Does a folder hold the competition's files? `check_layout` compares a data folder with the layout of Kaggle's
"cassava-leaf-disease-classification" (`kitlib.data.competition`), reading names only; `describe_layout` says what it found.
"""

import dataclasses
import os

from kitlib.data import competition


@dataclasses.dataclass
class Layout:
    """What `check_layout` found in a data folder.

    shards / records: per split ("train", "test"), shard files and the records their names count.
    images: per split, image files in ``{split}_images/``. csv_rows: rows of train.csv (None: absent).
    classes: names from the label map (empty: absent). missing: expected entries that are absent.
    problems: entries present but unusable, or counts that disagree.
    """
    root: str
    shards: dict
    records: dict
    images: dict
    csv_rows: int
    classes: tuple
    missing: list
    problems: list

    @property
    def complete(self):
        """True when nothing is missing and nothing is wrong."""
        return not self.missing and not self.problems


def _csv_rows(path):
    with open(path, encoding="utf-8") as f:
        return max(0, sum(1 for line in f if line.strip()) - 1)


def check_layout(root):
    """Compare a folder with the competition's layout (`kitlib.data.competition`); reads names only, writes nothing.

    Shards come from `kitlib.data.tfrecords.list_tfrecords` and are counted from their names with
    `kitlib.data.tfrecords.count_data_items`; the label map is read with `kitlib.data.tfrecords.read_label_map`.
    Returns a `Layout`.
    """
    root = os.fspath(root)
    layout = Layout(root, {}, {}, {}, None, (), [], [])
    for split in competition.SPLITS:
        _check_split(layout, competition.split_paths(root, split), split)
    for name in competition.files():
        if not os.path.isfile(os.path.join(root, name)):
            layout.missing.append(name)
    paths = competition.split_paths(root, "train")
    if os.path.isfile(paths.csv):
        layout.csv_rows = _csv_rows(paths.csv)
    if os.path.isfile(paths.label_map):
        from kitlib.data import tfrecords  # noqa: PLC0415 - TensorFlow: only when a layout is checked

        try:
            layout.classes = tfrecords.read_label_map(paths.label_map)
        except tfrecords.DataError as err:
            layout.problems.append(str(err))
    counts = {"train.csv rows": layout.csv_rows, "train_images/": layout.images.get("train"),
              "train shard records": layout.records.get("train")}
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        layout.problems.append("train counts disagree: " + ", ".join(f"{k} {v}" for k, v in known.items()))
    return layout


def _check_split(layout, paths, split):
    """Shards and images of one split into `layout` (missing folders, empty ones, shard names without counts)."""
    from kitlib.data import tfrecords  # noqa: PLC0415 - TensorFlow: only when a layout is checked

    if not os.path.isdir(paths.tfrecords_dir):
        layout.missing.append(os.path.basename(paths.tfrecords_dir) + "/")
    else:
        try:
            files = tfrecords.list_tfrecords(layout.root, split)
            layout.shards[split] = len(files)
            layout.records[split] = tfrecords.count_data_items(files)
        except tfrecords.DataError as err:  # no shard, or a shard name without its record count
            layout.problems.append(str(err))
    folder = os.path.basename(paths.images_dir) + "/"
    if not os.path.isdir(paths.images_dir):
        layout.missing.append(folder)
        return
    layout.images[split] = sum(1 for n in os.listdir(paths.images_dir) if n.lower().endswith(tfrecords.IMAGE_EXTENSIONS))
    if not layout.images[split]:
        layout.problems.append(f"{folder} holds no images")


def describe_layout(layout):
    """Lines saying what is in a checked folder and what is missing."""
    lines = [f"{layout.root}:"]
    for split in competition.SPLITS:
        if split in layout.shards:
            records = layout.records.get(split, "? (uncounted)")
            lines.append(f"  {split + '_tfrecords/':<18} {layout.shards[split]} shards, {records} records")
        if split in layout.images:
            lines.append(f"  {split + '_images/':<18} {layout.images[split]} images")
    if layout.csv_rows is not None:
        lines.append(f"  {'train.csv':<18} {layout.csv_rows} labelled images")
    if layout.classes:
        lines.append(f"  {'label map':<18} {len(layout.classes)} classes: {', '.join(layout.classes)}")
    lines += [f"  missing: {name}" for name in layout.missing]
    lines += [f"  problem: {text}" for text in layout.problems]
    lines.append("  layout complete: the kit's commands and notebooks can read it" if layout.complete else
                 "  layout incomplete: see the lines above")
    return lines
