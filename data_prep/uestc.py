"""UESTC-MMEA-CL: egocentric activities (Xu et al., 2023), 32 classes, ~200 clips each.

Each sample is a first-person RGB video with synchronised accelerometer and gyroscope streams.
The publisher splits every class 7:2:1 into ``train.txt``, ``val.txt`` and ``test.txt``; class
folders are named ``<k>_<activity>`` (``1_upstairs`` ... ``32_watch_TV``) under ``video/`` and
``sensor/``.

What is *not* verified here (no copy of the dataset was available): the exact columns of a
split-list line and of a sensor file. The reader therefore takes only the first token of a split
line as the sample path (relative to ``video/``, with or without the ``video/`` prefix and the
file extension) and the label from the ``<k>_`` prefix of its class folder; sensor files are
read as numeric tables whose last six numeric columns are acc x/y/z, gyro x/y/z unless
``acc_columns`` / ``gyro_columns`` say otherwise, or as two files per sample when
``acc_suffix`` / ``gyro_suffix`` are set. Videos may be files (mp4/avi) or folders of extracted
frames (the publisher's frame extractor writes ``img_00001.jpg`` ...).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from data_prep import decode
from data_prep.core import DatasetAdapter, Item, Plan, PrepError

EXPECTED_CLASSES = 32
_CLASS_FOLDER = re.compile(r"^(\d+)_(.+)$")


class UESTCMMEACL(DatasetAdapter):
    name = "uestc-mmea-cl"
    modalities = ("video", "acc", "gyro")
    description = "UESTC-MMEA-CL: 32 egocentric activities, RGB video + accelerometer + gyroscope, split 7:2:1"
    source = "https://ivipclab.github.io/publication_uestc-mmea-cl/mmea-cl/ (request form / download link there)"
    licence = "educational and non-commercial research use only (publisher's terms)"
    layout = """\
    <raw>/
      train.txt  val.txt  test.txt     one sample per line; first token = path under video/
                                       e.g. "1_upstairs/<sample>" (extension optional)
      video/<k>_<activity>/<sample>.mp4   (or a folder <sample>/ of extracted frames *.jpg)
      sensor/<k>_<activity>/<sample>.csv  (or .txt) numeric columns, last six = acc xyz, gyro xyz"""
    default_options: ClassVar[dict] = {
        "video_dir": "video",
        "sensor_dir": "sensor",
        "train_splits": ["train.txt"],
        "val_splits": ["val.txt"],  # the validation split written as val.pt ([]: carved from train)
        "test_splits": ["test.txt"],
        "video_extensions": [".mp4", ".avi", ".MP4"],
        "sensor_extensions": [".csv", ".txt"],
        "sensor_rate": 50.0,  # Hz of the raw sensor files (set to the publisher's rate)
        "acc_columns": None,  # indices among numeric columns; None: the last six are acc, gyro
        "gyro_columns": None,
        "acc_suffix": None,  # e.g. "_acc.txt": separate accelerometer file next to the sample path
        "gyro_suffix": None,
    }

    def list_items(self, raw_dir: Path) -> Plan:
        video_dir = self.require(raw_dir / self.options["video_dir"], raw_dir, "video folder")
        sensor_dir = self.require(raw_dir / self.options["sensor_dir"], raw_dir, "sensor folder")
        entries = []
        for split, files in (("train", self.options["train_splits"]), ("val", self.options["val_splits"]),
                             ("test", self.options["test_splits"])):
            for name in files:
                path = self.require(raw_dir / name, raw_dir, "split list")
                for number, line in enumerate(path.read_text().splitlines(), 1):
                    if line.strip():
                        entries.append((split, self._relative(line.split()[0]), f"{path.name}:{number}"))
        classes: dict[int, str] = {}
        for _, relative, where in entries:
            match = _CLASS_FOLDER.match(relative.parts[0]) if len(relative.parts) > 1 else None
            if not match:
                raise PrepError(f"{self.name}: {where}: cannot read the class from {relative}; expected "
                                f"<k>_<activity>/<sample> (see the README, section Datasets)")
            classes[int(match.group(1))] = match.group(2).replace("_", " ")
        numbers = sorted(classes)
        label_of = {k: i for i, k in enumerate(numbers)}
        items = [Item(key=str(relative), split=split,
                      label=label_of[int(_CLASS_FOLDER.match(relative.parts[0]).group(1))],
                      files={"video": str(video_dir / relative), "sensor": str(sensor_dir / relative)})
                 for split, relative, _ in entries]
        notes = [] if len(numbers) == EXPECTED_CLASSES else \
            [f"found {len(numbers)} activity classes, the full UESTC-MMEA-CL has {EXPECTED_CLASSES}"]
        return Plan(items, [classes[k] for k in numbers], notes=notes)

    def _relative(self, token: str) -> Path:
        path = Path(token.strip().replace("\\", "/"))
        if path.parts and path.parts[0] == self.options["video_dir"]:
            path = Path(*path.parts[1:])
        if path.suffix in self.options["video_extensions"] + self.options["sensor_extensions"]:
            path = path.with_suffix("")
        return path

    def _find(self, stem: Path, extensions: list[str]) -> Path:
        for extension in extensions:
            candidate = stem.parent / (stem.name + extension)
            if candidate.is_file():
                return candidate
        raise decode.DecodeError(stem, f"no file with extension {extensions} (listed in the split but missing)")

    def decode(self, item: Item, settings) -> dict:
        stem = Path(item.files["video"])
        if stem.is_dir():  # extracted frames
            frames = sorted(p for p in stem.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if not frames:
                raise decode.DecodeError(stem, "frame folder is empty")
            picks = decode.sample_frame_indices(len(frames), settings.video_frames)
            video = np.stack([decode.image_rgb(frames[i]) for i in picks])
        else:
            video = decode.video_frames(self._find(stem, self.options["video_extensions"]), settings.video_frames)
        acc, gyro = self._inertial(Path(item.files["sensor"]))
        cfg = settings.inertial
        length = int(cfg.sample_rate * cfg.duration)
        signals = {}
        for name, values in (("acc", acc), ("gyro", gyro)):
            values = decode.resample_signal(values, float(self.options["sensor_rate"]), cfg.sample_rate)
            signals[name] = decode.centre_window(values, length)  # the middle of the activity
        return {"video": video, **signals}

    def _inertial(self, stem: Path) -> tuple[np.ndarray, np.ndarray]:
        """(acc, gyro), each ``[3, samples]`` float32."""
        if self.options["acc_suffix"] and self.options["gyro_suffix"]:
            acc = self._xyz(decode.numeric_table(stem.parent / (stem.name + self.options["acc_suffix"])), None, stem)
            gyro = self._xyz(decode.numeric_table(stem.parent / (stem.name + self.options["gyro_suffix"])), None, stem)
            return acc, gyro
        table = decode.numeric_table(self._find(stem, self.options["sensor_extensions"]))
        if table.shape[1] < 6 and not (self.options["acc_columns"] and self.options["gyro_columns"]):
            raise decode.DecodeError(stem, f"sensor table has {table.shape[1]} numeric columns, need 6")
        acc = self._xyz(table, self.options["acc_columns"] or [-6, -5, -4], stem)
        gyro = self._xyz(table, self.options["gyro_columns"] or [-3, -2, -1], stem)
        return acc, gyro

    @staticmethod
    def _xyz(table: np.ndarray, columns: list[int] | None, stem: Path) -> np.ndarray:
        columns = columns or [-3, -2, -1]
        if len(table) < 2:
            raise decode.DecodeError(stem, "sensor file has fewer than two rows")
        return np.ascontiguousarray(table[:, columns].T, dtype=np.float32)
