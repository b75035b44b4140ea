"""The COMM modality stream: one public dataset per modality, each with its own classes.

Default choice *(design choice; every part is an option)*, 10 classes per modality, 40 in all:

- image: Imagenette 320 px (raw ``image/``), its 10 ImageNet classes;
- video: UCF101 split 1 (raw ``video/``), 10 of its 101 actions (``video.classes``);
- audio: ESC-50's ESC-10 subset (raw ``audio/``), 10 sound classes, fold 5 = test;
- depth: SUN RGB-D depth maps (raw ``depth/``), 10 common scene types (``depth.classes``).

The image source may instead be any Hugging Face ``datasets`` dataset (``image.kind: hf``,
``image.path``: hub id or a local folder written by ``Dataset.save_to_disk`` or loadable by
``datasets.load_dataset``). Each sample carries only its own modality; ``meta.json`` records the
modality of every class (``class_modalities``).

Recurring modalities (``recurring``: modalities given a second dataset, each a task of its own
when the modality comes back; the ``modality-stream-recurring`` adapter sets image, video, audio):

- image again: a CIFAR-100 subset through ``datasets`` (``image2``; a local copy written by
  ``Dataset.save_to_disk``, or the hub id ``uoft-cs/cifar100``), label column ``fine_label``;
- video again: HMDB51 split 1 (raw ``video2/``: ``hmdb51/<action>/*.avi`` and the
  ``testTrainMulti_7030_splits/<action>_test_split1.txt`` lists, 1 = train, 2 = test, 0 = unused);
- audio again: Speech Commands v0.02 (raw ``audio2/``: ``<word>/*.wav``, ``testing_list.txt``).

``meta.json`` records the dataset of every class (``class_sources``), so that the k-th task of a
modality takes the classes of its k-th dataset.

Image and depth are capped at 300 train / 100 test samples per class by default (stable hash
pick; ``<modality>.max_train_per_class: null`` keeps all): Imagenette and SUN RGB-D are ten
times larger per class than UCF101 and ESC-10, and the engine currently holds every modality
densely for every sample (see :mod:`mmcl.data.processed`), so uncapped sets would need ~40 GB
of host memory at 224 px.
"""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from data_prep import decode
from data_prep.core import DatasetAdapter, Item, Plan, PrepError

IMAGENETTE = {"n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
              "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
              "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
              "n03888605": "parachute"}
UCF101_DEFAULT = ["Basketball", "Biking", "Diving", "Drumming", "GolfSwing", "HorseRiding", "PlayingGuitar",
                  "PushUps", "Rowing", "Typing"]
CIFAR100_DEFAULT = ["apple", "bicycle", "butterfly", "castle", "elephant", "lamp", "mountain", "rocket",
                    "tulip", "whale"]
HMDB51_DEFAULT = ["brush_hair", "cartwheel", "climb", "dribble", "fencing", "kiss", "pour", "ride_horse",
                  "shoot_bow", "sword"]
SPEECH_COMMANDS_DEFAULT = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SUNRGBD_DEFAULT = ["bathroom", "bedroom", "classroom", "computer_room", "conference_room", "corridor",
                   "dining_area", "kitchen", "living_room", "office"]


def _stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: deterministic splits and subsets without an RNG."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def _words(name: str) -> str:
    """``PlayingGuitar`` / ``living_room`` -> ``playing guitar`` / ``living room`` (for text prompts)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").lower()


class ModalityStream(DatasetAdapter):
    name = "modality-stream"
    modalities = ("image", "video", "audio", "depth")
    description = "COMM modality stream: Imagenette (image), UCF101 (video), ESC-10 (audio), SUN RGB-D (depth)"
    source = ("image: https://github.com/fastai/imagenette (imagenette2-320.tgz); "
              "video: https://www.crcv.ucf.edu/data/UCF101.php (UCF101.rar + UCF101TrainTestSplits-RecognitionTask.zip); "
              "audio: https://github.com/karolpiczak/ESC-50 (master.zip); "
              "depth: https://rgbd.cs.princeton.edu/ (SUNRGBD.zip)")
    licence = ("Imagenette: ImageNet terms (non-commercial research); UCF101: research use; "
               "ESC-50: CC BY-NC 3.0; SUN RGB-D: research use, cite the four source datasets; "
               "recurring: CIFAR-100 (no licence stated; research use), HMDB51: CC BY 4.0, "
               "Speech Commands: CC BY 4.0")
    layout = """\
    <raw>/
      image/imagenette2-320/{train,val}/<wnid>/*.JPEG       (or image.kind=hf: a datasets folder)
      video/UCF-101/<Action>/v_<Action>_gXX_cYY.avi
      video/ucfTrainTestlist/{classInd.txt, trainlist01.txt, testlist01.txt}
      audio/ESC-50-master/{audio/*.wav, meta/esc50.csv}
      depth/SUNRGBD/**/<sample>/{scene.txt, depth_bfx/*.png (or depth/*.png)}
      recurring (option recurring):
      image2/cifar100/                                      (a datasets folder, or image2.path)
      video2/hmdb51/<action>/*.avi
      video2/testTrainMulti_7030_splits/<action>_test_split1.txt
      audio2/speech_commands/{<word>/*.wav, testing_list.txt}"""
    default_options: ClassVar[dict] = {
        "modalities": ["image", "video", "audio", "depth"],
        "image": {"kind": "imagefolder", "dir": "image/imagenette2-320", "train": "train", "test": "val",
                  "path": None, "image_column": "image", "label_column": "label", "classes": None,
                  "max_train_per_class": 300, "max_test_per_class": 100},
        "video": {"dir": "video", "videos": "UCF-101", "lists": "ucfTrainTestlist", "split": 1,
                  "classes": UCF101_DEFAULT, "max_train_per_class": None, "max_test_per_class": None},
        "audio": {"dir": "audio/ESC-50-master", "subset": "esc10", "classes": None, "test_folds": [5],
                  "max_train_per_class": None, "max_test_per_class": None},
        "depth": {"dir": "depth/SUNRGBD", "classes": SUNRGBD_DEFAULT, "test_list": None, "test_fraction": 0.2,
                  "bitshift": True, "max_train_per_class": 300, "max_test_per_class": 100},
        "recurring": [],  # modalities with a second dataset: image, video, audio
        "image2": {"kind": "hf", "dir": "image2/cifar100", "train": "train", "test": "test", "path": None,
                   "image_column": "img", "label_column": "fine_label", "classes": CIFAR100_DEFAULT,
                   "max_train_per_class": 300, "max_test_per_class": 100},
        "video2": {"dir": "video2", "videos": "hmdb51", "lists": "testTrainMulti_7030_splits", "split": 1,
                   "classes": HMDB51_DEFAULT, "max_train_per_class": None, "max_test_per_class": None},
        "audio2": {"dir": "audio2/speech_commands", "classes": SPEECH_COMMANDS_DEFAULT,
                   "max_train_per_class": 300, "max_test_per_class": 100},
    }
    SECOND = {"image": "image2", "video": "video2", "audio": "audio2"}

    def __init__(self, options=None):
        options = dict(options or {})
        merged = {}
        for key, value in options.items():  # nested sections merge key by key
            default = self.default_options.get(key)
            merged[key] = {**default, **value} if isinstance(default, dict) and isinstance(value, dict) else value
        super().__init__(merged)
        for key in ("image", "video", "audio", "depth", "image2", "video2", "audio2"):
            self.options[key] = {**self.default_options[key], **self.options[key]}
            unknown = sorted(set(self.options[key]) - set(self.default_options[key]))
            if unknown:
                raise PrepError(f"{self.name}: unknown option(s) {key}.{unknown}")
        self.modalities = tuple(self.options["modalities"])
        unknown = [m for m in self.options["recurring"] if m not in self.SECOND or m not in self.modalities]
        if unknown:
            raise PrepError(f"{self.name}: option recurring: {unknown} has no second dataset or is not among "
                            f"modalities {list(self.modalities)} (second datasets: {sorted(self.SECOND)})")
        self._hf = {}

    def list_items(self, raw_dir: Path) -> Plan:
        items, class_names, class_modalities, class_sources = [], [], [], []
        sources = [(m, m) for m in self.modalities] + [(m, self.SECOND[m]) for m in self.options["recurring"]]
        for modality, section in sources:
            found, names = getattr(self, f"_list_{section}")(raw_dir, self.options[section])
            found = self._cap(found, self.options[section])
            offset = len(class_names)
            for item in found:
                item.label += offset
                item.modalities = (modality,)
            items += found
            class_names += [n if n not in class_names else f"{n} ({section})" for n in names]
            class_modalities += [modality] * len(names)
            class_sources += [section] * len(names)
        return Plan(items, class_names, class_modalities=class_modalities, class_sources=class_sources,
                    notes=["classes per dataset: " + ", ".join(f"{s} {class_sources.count(s)}" for _, s in sources)])

    @staticmethod
    def _cap(items: list[Item], options: dict) -> list[Item]:
        """At most ``max_<split>_per_class`` samples per class, picked by a stable hash of the key."""
        kept, seen = [], {}
        for item in sorted(items, key=lambda i: _stable_fraction(i.key)):
            limit = options.get(f"max_{item.split}_per_class")
            count = seen.get((item.split, item.label), 0)
            if limit is None or count < limit:
                kept.append(item)
                seen[(item.split, item.label)] = count + 1
        return sorted(kept, key=lambda i: (i.split, i.label, i.key))

    # image ---------------------------------------------------------------------------------
    def _list_image(self, raw_dir: Path, options: dict) -> tuple[list[Item], list[str]]:
        if options["kind"] == "hf":
            return self._list_image_hf(raw_dir, options)
        root = self.require(raw_dir / options["dir"], raw_dir, "image folder")
        folders = sorted(p.name for p in self.require(root / options["train"], raw_dir, "image train folder").iterdir()
                         if p.is_dir())
        chosen = options["classes"] or folders
        missing = [c for c in chosen if c not in folders]
        if missing:
            raise PrepError(f"{self.name}: image classes {missing} not found under {root / options['train']}")
        items = []
        for split, sub in (("train", options["train"]), ("test", options["test"])):
            for label, folder in enumerate(chosen):
                directory = self.require(root / sub / folder, raw_dir, "image class folder")
                items += [Item(key=f"image/{sub}/{folder}/{p.name}", split=split, label=label, files={"image": str(p)})
                          for p in sorted(directory.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
        return items, [IMAGENETTE.get(c, _words(c)) for c in chosen]

    def _hf_dataset(self, raw_dir: Path, options: dict):
        key = options["dir"]
        if key not in self._hf:
            import datasets

            location = options["path"] or str(raw_dir / options["dir"])
            local = Path(location).expanduser()
            if local.is_dir() and (local / "dataset_dict.json").is_file():
                self._hf[key] = datasets.load_from_disk(str(local))
            elif local.exists():
                self._hf[key] = datasets.load_dataset(str(local))
            else:  # a hub id: the ordinary client downloads and caches it
                self._hf[key] = datasets.load_dataset(location)
        return self._hf[key]

    def _list_image_hf(self, raw_dir: Path, options: dict, section: str = "image") -> tuple[list[Item], list[str]]:
        dataset = self._hf_dataset(raw_dir, options)
        train_split = options["train"] if options["train"] in dataset else "train"
        test_split = next((s for s in (options["test"], "test", "validation") if s in dataset), None)
        if test_split is None:
            raise PrepError(f"{self.name}: the image dataset has splits {list(dataset)}, none is a test split")
        feature = dataset[train_split].features[options["label_column"]]
        all_names = list(getattr(feature, "names", None) or sorted(set(dataset[train_split][options["label_column"]])))
        chosen = options["classes"] or all_names
        index = {all_names.index(c): k for k, c in enumerate(chosen)}
        items = []
        for split, name in (("train", train_split), ("test", test_split)):
            for row, label in enumerate(dataset[name][options["label_column"]]):
                label = all_names.index(label) if isinstance(label, str) else int(label)
                if label in index:
                    items.append(Item(key=f"{options['dir']}/{name}/{row:07d}", split=split, label=index[label],
                                      files={"hf": f"{name}#{row}"},
                                      extra={"raw_dir": str(raw_dir), "section": section}))
        return items, [_words(str(c)) for c in chosen]

    def _list_image2(self, raw_dir: Path, options: dict) -> tuple[list[Item], list[str]]:
        return self._list_image_hf(raw_dir, options, "image2")

    # video ---------------------------------------------------------------------------------
    def _list_video(self, raw_dir: Path, options: dict) -> tuple[list[Item], list[str]]:
        root = self.require(raw_dir / options["dir"], raw_dir, "video folder")
        lists = self.require(root / options["lists"], raw_dir, "UCF101 split lists")
        available = [line.split()[1] for line in (lists / "classInd.txt").read_text().splitlines() if line.strip()]
        chosen = options["classes"] or available
        missing = [c for c in chosen if c not in available]
        if missing:
            raise PrepError(f"{self.name}: UCF101 classes {missing} not in classInd.txt")
        index = {c: k for k, c in enumerate(chosen)}
        items = []
        for split, name in (("train", f"trainlist0{options['split']}.txt"), ("test", f"testlist0{options['split']}.txt")):
            for line in self.require(lists / name, raw_dir, "UCF101 split list").read_text().splitlines():
                if not line.strip():
                    continue
                relative = line.split()[0]
                action = relative.split("/")[0]
                if action in index:
                    items.append(Item(key=f"video/{relative}", split=split, label=index[action],
                                      files={"video": str(root / options["videos"] / relative)}))
        return items, [_words(c) for c in chosen]

    def _list_video2(self, raw_dir: Path, options: dict) -> tuple[list[Item], list[str]]:
        """HMDB51: ``<lists>/<action>_test_split<k>.txt`` lines ``<file> <0|1|2>`` (1 train, 2 test, 0 unused)."""
        root = self.require(raw_dir / options["dir"], raw_dir, "HMDB51 folder")
        lists = self.require(root / options["lists"], raw_dir, "HMDB51 split lists")
        items = []
        for label, action in enumerate(options["classes"]):
            listing = self.require(lists / f"{action}_test_split{options['split']}.txt", raw_dir, "HMDB51 split list")
            for line in listing.read_text().splitlines():
                if not line.strip():
                    continue
                name, flag = line.split()[:2]
                if flag in ("1", "2"):
                    items.append(Item(key=f"video2/{action}/{name}", split="train" if flag == "1" else "test",
                                      label=label, files={"video": str(root / options["videos"] / action / name)}))
        return items, [_words(c) for c in options["classes"]]

    # audio ---------------------------------------------------------------------------------
    def _list_audio(self, raw_dir: Path, options: dict) -> tuple[list[Item], list[str]]:
        root = self.require(raw_dir / options["dir"], raw_dir, "ESC-50 folder")
        with open(self.require(root / "meta" / "esc50.csv", raw_dir, "ESC-50 metadata")) as stream:
            rows = list(csv.DictReader(stream))
        if options["subset"] == "esc10":
            rows = [r for r in rows if r["esc10"].strip().lower() == "true"]
        available = sorted({r["category"] for r in rows})
        chosen = options["classes"] or available
        index = {c: k for k, c in enumerate(chosen)}
        test_folds = {int(f) for f in options["test_folds"]}
        items = [Item(key=f"audio/{r['filename']}", split="test" if int(r["fold"]) in test_folds else "train",
                      label=index[r["category"]], files={"audio": str(root / "audio" / r["filename"])})
                 for r in rows if r["category"] in index]
        return items, [_words(c) for c in chosen]

    def _list_audio2(self, raw_dir: Path, options: dict) -> tuple[list[Item], list[str]]:
        """Speech Commands: ``<word>/*.wav``; the files named in ``testing_list.txt`` are the test split
        (``validation_list.txt`` stays in training: the engine carves its own validation share)."""
        root = self.require(raw_dir / options["dir"], raw_dir, "Speech Commands folder")
        test = {line.strip() for line in self.require(root / "testing_list.txt", raw_dir, "Speech Commands "
                "testing_list.txt").read_text().splitlines() if line.strip()}
        items = []
        for label, word in enumerate(options["classes"]):
            for path in sorted(self.require(root / word, raw_dir, "Speech Commands word folder").glob("*.wav")):
                relative = f"{word}/{path.name}"
                items.append(Item(key=f"audio2/{relative}", split="test" if relative in test else "train",
                                  label=label, files={"audio": str(path)}))
        return items, [f"the word {word}" for word in options["classes"]]

    # depth ---------------------------------------------------------------------------------
    def _list_depth(self, raw_dir: Path, options: dict) -> tuple[list[Item], list[str]]:
        root = self.require(raw_dir / options["dir"], raw_dir, "SUN RGB-D folder")
        chosen = options["classes"]
        test_keys = None
        if options["test_list"]:
            test_keys = {line.strip().strip("/") for line in Path(options["test_list"]).read_text().splitlines()
                         if line.strip()}
        found: dict[str, list[Item]] = {}
        for scene_file in sorted(root.rglob("scene.txt")):
            sample = scene_file.parent
            scene = scene_file.read_text().strip()
            if chosen and scene not in chosen:
                continue
            key = str(sample.relative_to(root))
            if test_keys is not None:
                split = "test" if key in test_keys else "train"
            else:
                split = "test" if _stable_fraction(key) < options["test_fraction"] else "train"
            found.setdefault(scene, []).append(Item(key=f"depth/{key}", split=split, label=0,
                                                    files={"depth": str(sample)}))
        names = list(chosen) if chosen else sorted(found)
        missing = [n for n in names if n not in found]
        if missing:
            raise PrepError(f"{self.name}: no SUN RGB-D samples with scene {missing} under {root}")
        items = []
        for label, scene in enumerate(names):
            for item in found[scene]:
                item.label = label
                items.append(item)
        return items, [_words(n) for n in names]

    # decoding ------------------------------------------------------------------------------
    def decode(self, item: Item, settings) -> dict:
        modality = item.modalities[0]
        if modality == "image":
            if "hf" in item.files:
                split, row = item.files["hf"].split("#")
                options = self.options[item.extra.get("section", "image")]
                dataset = self._hf_dataset(Path(item.extra["raw_dir"]), options)
                picture = dataset[split][int(row)][options["image_column"]]
                return {"image": np.asarray(picture.convert("RGB"))}
            return {"image": decode.image_rgb(item.files["image"])}
        if modality == "video":
            return {"video": decode.video_frames(item.files["video"], settings.video_frames)}
        if modality == "audio":
            return {"audio": decode.wav_audio(item.files["audio"], settings.audio.sample_rate)}
        sample = Path(item.files["depth"])
        pngs = sorted((sample / "depth_bfx").glob("*.png")) or sorted((sample / "depth").glob("*.png"))
        if not pngs:
            raise decode.DecodeError(sample, "no depth_bfx/*.png or depth/*.png")
        return {"depth": decode.depth_png(pngs[0], bitshift=self.options["depth"]["bitshift"])}


class ModalityStreamRecurring(ModalityStream):
    """The modality stream with a second dataset for image, video and audio (see the module docstring)."""

    name = "modality-stream-recurring"
    description = ("COMM modality stream with recurring modalities: the four datasets of modality-stream, then "
                   "CIFAR-100 (image), HMDB51 (video), Speech Commands (audio)")
    source = ModalityStream.source + ("; image again: https://www.cs.toronto.edu/~kriz/cifar.html (or the "
                                      "uoft-cs/cifar100 datasets copy); video again: "
                                      "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/ "
                                      "(hmdb51_org.rar + test_train_splits.rar); audio again: "
                                      "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz")
    default_options: ClassVar[dict] = {**ModalityStream.default_options, "recurring": ["image", "video", "audio"]}
