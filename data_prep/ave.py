"""AVE: Audio-Visual Event localization (Tian et al., ECCV 2018), 28 event classes, 4,143 clips.

Each clip is a 10 s YouTube video (mp4 with its audio track) labelled with one event category;
the annotation files give, per line, ``Category&VideoID&Quality&StartTime&EndTime`` (a header
line of that form comes first in ``Annotations.txt``). ``trainSet.txt``, ``valSet.txt`` and
``testSet.txt`` use the same line format and define the publisher's split.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from data_prep import decode
from data_prep.core import DatasetAdapter, Item, Plan, PrepError

EXPECTED_CLASSES = 28


def read_annotation_lines(path: Path) -> list[dict]:
    """Rows of an AVE annotation file (``&``-separated); the header line is skipped."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.lower().startswith("category&"):
            continue
        parts = line.split("&")
        if len(parts) < 5:
            raise PrepError(f"{path}:{number}: expected Category&VideoID&Quality&StartTime&EndTime, got {line!r}")
        category, video_id, quality, start, end = parts[:5]
        rows.append({"category": category.strip(), "video_id": video_id.strip(), "quality": quality.strip(),
                     "start": float(start), "end": float(end)})
    return rows


class AVE(DatasetAdapter):
    name = "ave"
    modalities = ("video", "audio")
    description = "AVE: 28 audio-visual event classes, 4,143 ten-second YouTube clips (video + audio)"
    source = ("https://sites.google.com/view/audiovisualresearch (AVE_Dataset.zip, ~6.6 GB; also linked from "
              "https://github.com/YapengTian/AVE-ECCV18)")
    licence = "research use; the clips are YouTube videos whose copyright stays with their owners"
    layout = """\
    <raw>/
      AVE/                 <VideoID>.mp4   (4,143 clips, 10 s, with audio)
      Annotations.txt      Category&VideoID&Quality&StartTime&EndTime  (header line first)
      trainSet.txt         same line format: the training split
      valSet.txt           same line format: the validation split (tuning only)
      testSet.txt          same line format: the test split"""
    default_options: ClassVar[dict] = {
        "video_dir": "AVE",
        "train_splits": ["trainSet.txt"],
        "val_splits": ["valSet.txt"],  # the validation split written as val.pt ([]: carved from train)
        "test_splits": ["testSet.txt"],
        "crop_to_event": False,  # True: sample frames/audio only inside the annotated event segment
    }

    def list_items(self, raw_dir: Path) -> Plan:
        video_dir = self.require(raw_dir / self.options["video_dir"], raw_dir, "video folder")
        split_rows = {}
        for split, files in (("train", self.options["train_splits"]), ("val", self.options["val_splits"]),
                             ("test", self.options["test_splits"])):
            split_rows[split] = [row for name in files
                                 for row in read_annotation_lines(self.require(raw_dir / name, raw_dir, "split list"))]
        class_names = sorted({row["category"] for rows in split_rows.values() for row in rows})
        index = {name: i for i, name in enumerate(class_names)}
        items = []
        for split, rows in split_rows.items():
            for row in rows:
                start, end = (row["start"], row["end"]) if self.options["crop_to_event"] else (None, None)
                path = video_dir / f"{row['video_id']}.mp4"
                items.append(Item(key=row["video_id"], split=split, label=index[row["category"]],
                                  files={"video": str(path)}, extra={"start": start, "end": end}))
        notes = []
        if len(class_names) != EXPECTED_CLASSES:
            notes.append(f"found {len(class_names)} categories, the full AVE has {EXPECTED_CLASSES}")
        return Plan(items, class_names, notes=notes)

    def decode(self, item: Item, settings) -> dict:
        path = item.files["video"]
        if not Path(path).is_file():
            raise decode.DecodeError(path, "file listed in the split but not found")
        start, end = item.extra.get("start"), item.extra.get("end")
        return {"video": decode.video_frames(path, settings.video_frames, start, end),
                "audio": decode.container_audio(path, settings.audio.sample_rate, start, end)}
