"""data_prep on small raw fixtures written in each dataset's on-disk format, offline.

Fixtures: mp4 with an AAC audio track (PyAV), wav (soundfile), frame folders and JPEGs (Pillow),
16-bit depth PNGs, inertial CSV, the publishers' split lists and metadata files, and a local
Hugging Face ``datasets`` folder (``DatasetDict.save_to_disk``). The real preparation code runs
on them, and the results go through the engine with the smoke model.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import av
import soundfile
from PIL import Image

import data_prep
from data_prep.__main__ import main as cli_main
from data_prep.core import run_preparation
from mmcl.config import ConfigError, load_config
from mmcl.data.benchmarks import load_benchmark

from crafted_files import plant_crafted_pickle

SMOKE = "smoke"


# --------------------------------------------------------------------------- raw writers
def write_mp4(path: Path, shade: int, frames: int = 8, size=(40, 32), fps: int = 8, audio: bool = True,
              tone: float = 440.0, sample_rate: int = 16000, seconds: float = 1.0) -> Path:
    """An mp4 (MPEG-4 part 2 video + AAC audio) whose frames and tone depend on its class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
        for index in range(frames):
            picture = np.zeros((size[1], size[0], 3), np.uint8)
            picture[..., index % 3] = shade
            for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            total = int(sample_rate * seconds)
            wave = (0.3 * np.sin(2 * np.pi * tone * np.arange(total) / sample_rate)).astype(np.float32)
            for start in range(0, total, 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def write_wav(path: Path, tone: float, sample_rate: int = 22050, seconds: float = 0.6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32), sample_rate)
    return path


def write_jpg(path: Path, shade: int, size=(36, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = np.zeros((size[1], size[0], 3), np.uint8)
    picture[..., shade % 3] = 60 + shade
    Image.fromarray(picture).save(path, quality=90)
    return path


def truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def make_ave(root: Path, classes: int = 6, train: int = 2, test: int = 1, corrupt: bool = True) -> Path:
    """AVE layout: AVE/<id>.mp4, Annotations.txt and the split lists (Category&VideoID&Quality&Start&End)."""
    names = [f"event {k}" for k in range(classes)]
    lines = {"trainSet.txt": [], "testSet.txt": [], "valSet.txt": []}
    for k, name in enumerate(names):
        for j in range(train + test + 1):
            video_id = f"vid{k}x{j}"
            split = "trainSet.txt" if j < train else "testSet.txt" if j < train + test else "valSet.txt"
            write_mp4(root / "AVE" / f"{video_id}.mp4", shade=40 * k, tone=300 + 150 * k)
            lines[split].append(f"{name}&{video_id}&good&0&1")
    if corrupt:
        truncate(root / "AVE" / "vid0x0.mp4")
    header = "Category&VideoID&Quality&StartTime&EndTime"
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    (root / "Annotations.txt").write_text("\n".join([header] + sum(lines.values(), [])) + "\n")
    return root


def make_uestc(root: Path, classes: int = 6) -> Path:
    """UESTC-MMEA-CL layout: video/<k>_<activity>/ (mp4 or frame folder), sensor/... .csv, split lists."""
    rng = np.random.default_rng(0)
    splits = {"train.txt": [], "val.txt": [], "test.txt": []}
    for k in range(1, classes + 1):
        folder = f"{k}_activity_{k}"
        for j, split in enumerate(["train.txt", "train.txt", "val.txt", "test.txt"]):
            sample = f"{folder}/clip_{j}"
            if j % 2 == 0:
                write_mp4(root / "video" / f"{sample}.mp4", shade=30 * k, audio=False)
            else:  # frames extracted by the publisher's frame extractor
                for f in range(3):
                    write_jpg(root / "video" / sample / f"img_{f + 1:05d}.jpg", shade=30 * k + f)
            t = np.arange(120) / 50.0
            columns = [t] + [np.sin(2 * np.pi * (k + axis) * t) + 0.1 * rng.normal(size=t.size) for axis in range(6)]
            table = np.stack(columns, axis=1)
            (root / "sensor" / folder).mkdir(parents=True, exist_ok=True)
            header = "time,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n"
            body = "\n".join(",".join(f"{v:.4f}" for v in row) for row in table)
            (root / "sensor" / f"{sample}.csv").write_text(header + body + "\n")
            splits[split].append(f"{sample}.mp4 {k - 1}" if j % 2 == 0 else f"{sample} 3 {k - 1}")
    for name, rows in splits.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


EMOTIONS = ["anger", "happiness", "neutral", "sadness"]


def make_samsemo(root: Path, train: int = 2, test: int = 1) -> Path:
    """A local copy of the SAMSEMO hub repository: samsemo.tsv, splits/, data/EN.zip and data/DE/."""
    rows = ["utterance_id\tmovie_title\tlanguage\ttext\temotion"]
    staging = root / "staging"
    for language in ("EN", "DE"):
        lists = {"train": [], "valid": [], "test": []}
        for k, emotion in enumerate(EMOTIONS):
            for j in range(train + test + 1):
                utterance = f"{language.lower()}{k}m_{j}"
                split = "train" if j < train else "test" if j < train + test else "valid"
                lists[split].append(utterance)
                rows.append(f"{utterance}\tmovie {k}\t{language}\t{language} words about {emotion} {j}\t{emotion.upper()}")
                folder = (staging if language == "EN" else root / "data") / language / utterance
                if language == "EN":
                    write_mp4(folder / f"{utterance}.mp4", shade=50 * k, tone=250 + 100 * k)
                else:
                    for f in range(2):
                        write_jpg(folder / f"frame_{f}.jpg", shade=50 * k + f)
                write_wav(folder / "audio.wav", tone=250 + 100 * k)
        (root / "splits").mkdir(parents=True, exist_ok=True)
        for split, ids in lists.items():
            (root / "splits" / f"{split}_split_{language}.txt").write_text("\n".join(ids) + "\n")
    (root / "data").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "data" / "EN.zip", "w") as bundle:
        for file in (staging / "EN").rglob("*"):
            bundle.write(file, file.relative_to(staging))
    import shutil

    shutil.rmtree(staging)
    (root / "samsemo.tsv").write_text("\n".join(rows) + "\n")
    return root


def make_stream_image_audio(root: Path) -> Path:
    """Modality stream raw folder: a local `datasets` image set (save_to_disk) and ESC-50."""
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog", "fish", "bird"])})
    splits = {}
    for split, per_class in (("train", 3), ("validation", 2)):
        images, labels = [], []
        for label in range(4):
            for j in range(per_class):
                picture = np.zeros((20, 24, 3), np.uint8)
                picture[..., label % 3] = 40 * (label + 1) + j
                images.append(Image.fromarray(picture))
                labels.append(label)
        splits[split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root / "image" / "hf"))
    esc = root / "audio" / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    categories = [("dog", True), ("rain", True), ("crying_baby", True), ("airplane", False)]
    for target, (category, esc10) in enumerate(categories):
        for fold in (1, 2, 5):
            name = f"{fold}-{1000 + target}-A-0.wav"
            write_wav(esc / "audio" / name, tone=200 + 120 * target + 10 * fold)
            rows.append(f"{name},{fold},{target},{category},{esc10},{1000 + target},A")
    (esc / "meta").mkdir(parents=True, exist_ok=True)
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def make_stream_video_depth(root: Path) -> Path:
    """Modality stream raw folder: UCF101 (avi-named mp4 content + split lists) and SUN RGB-D depth PNGs."""
    lists = root / "video" / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    actions = ["Biking", "Diving", "Typing"]
    (lists / "classInd.txt").write_text("\n".join(f"{k + 1} {a}" for k, a in enumerate(actions)) + "\n")
    train, test = [], []
    for k, action in enumerate(actions):
        for group, target in ((8, train), (9, train), (1, test)):
            name = f"{action}/v_{action}_g{group:02d}_c01.avi"
            write_mp4(root / "video" / "UCF-101" / name, shade=60 * (k + 1), audio=False)
            target.append(f"{name} {k + 1}" if target is train else name)
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    for k, scene in enumerate(["bedroom", "kitchen", "office"]):
        for j in range(4):
            sample = root / "depth" / "SUNRGBD" / "kv1" / f"{scene}_{j:04d}"
            (sample / "depth_bfx").mkdir(parents=True)
            (sample / "scene.txt").write_text(scene + "\n")
            metres = 1.0 + k + np.linspace(0, 1, 30 * 40).reshape(30, 40)
            raw = (metres * 1000).astype(np.uint32)
            stored = (((raw << 3) | (raw >> 13)) & 0xFFFF).astype(np.uint16)  # SUN RGB-D's bit rotation
            Image.fromarray(stored).save(sample / "depth_bfx" / f"{j:04d}.png")
    return root


def smoke_with(tmp_path: Path, benchmark: str, path: Path, extra: list[str] | None = None):
    """The smoke profile reading a prepared folder; one epoch and one thread keep the suite short on shared CPUs."""
    return load_config(SMOKE, [f"runtime.output_dir={tmp_path / 'runs'}", f"benchmarks.{benchmark}.source=processed",
                               f"benchmarks.{benchmark}.path={path}", "train.epochs=1", "runtime.num_threads=1",
                               *(extra or [])])


# --------------------------------------------------------------------------- tests
def test_ave_prepare_skips_corrupt_file_and_trains(tmp_path, smoke_config):
    from mmcl.engine import run

    raw = make_ave(tmp_path / "raw")
    # One of 12 training files is unreadable (8 %): above the default limit of 5 %, allowed here.
    summary = data_prep.prepare("ave", raw, tmp_path / "ave", smoke_config, max_skipped_fraction=0.1)
    assert summary.counts == {"train": 11, "val": 6, "test": 6}  # 12 listed, one truncated mp4; valSet.txt
    assert summary.skipped == 1 and "vid0x0.mp4" in summary.failures[0]["file"]
    assert "vid0x0.mp4" in str(summary) and "skipped (unreadable files): 1" in str(summary)
    meta = json.loads((tmp_path / "ave" / "meta.json").read_text())
    assert meta["complete"] and meta["summary"]["skipped"] == 1 and len(meta["class_names"]) == 6
    assert not (tmp_path / "ave" / ".work").exists()
    stored = torch.load(tmp_path / "ave" / "train.pt", weights_only=True)
    assert stored["inputs"]["video"].shape == (11, 2, 3, 32, 32) and stored["inputs"]["video"].dtype == torch.uint8
    assert stored["inputs"]["audio"].shape == (11, 3, 32, 32) and stored["rows"] == {}

    again = data_prep.prepare("ave", raw, tmp_path / "ave", smoke_config, max_skipped_fraction=0.1)
    assert again.reused and again.skipped == 1

    config = smoke_with(tmp_path, "av-events", tmp_path / "ave", ["benchmarks.av-events.num_classes=6"])
    from mmcl.data.benchmarks import load_benchmark

    benchmark = load_benchmark(config, "av-events")  # valSet.txt is the validation split, train stays whole
    assert len(benchmark.train) == 11 and len(benchmark.val) == 6 and len(benchmark.test) == 6
    result = run(config, "class_incremental", "finetune", seed=0)
    matrix = result.accuracy_matrix["standard"]
    assert len(matrix) == 2 and all(0.0 <= a <= 100.0 for row in matrix for a in row)


def test_corrupt_file_fails_by_policy(tmp_path, smoke_config):
    raw = make_ave(tmp_path / "raw", classes=2, train=1, test=1)
    with pytest.raises(data_prep.CorruptSample, match=r"vid0x0\.mp4"):
        data_prep.prepare("ave", raw, tmp_path / "out", smoke_config, on_error="fail")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_missing_raw_folder_says_what_to_download(tmp_path, smoke_config, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(data_prep.MissingRawData) as error:
        data_prep.prepare("uestc-mmea-cl", missing, tmp_path / "out", smoke_config)
    message = str(error.value)
    assert str(missing) in message and "ivipclab.github.io" in message and "sensor/<k>_<activity>" in message
    # A raw folder without one of its parts names the missing part.
    (tmp_path / "partial" / "AVE").mkdir(parents=True)
    with pytest.raises(data_prep.MissingRawData, match="trainSet.txt"):
        data_prep.prepare("ave", tmp_path / "partial", tmp_path / "out", smoke_config)
    # The command line prints the same message and exits with status 2, no traceback.
    code = cli_main(["samsemo", "--raw", str(missing), "--out", str(tmp_path / "o"), "--profile", SMOKE, "--quiet"])
    assert code == 2
    assert "huggingface.co/datasets/SamsungNLP/SAMSEMO" in capsys.readouterr().err


def interrupted_at(adapter, call: int):
    """``adapter`` whose decoding raises KeyboardInterrupt at its ``call``-th sample (the user pressed
    Ctrl-C, or the job was killed)."""
    decode, calls = adapter.decode, {"n": 0}

    def interrupted(item, settings):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return decode(item, settings)

    adapter.decode = interrupted
    return adapter


def test_preparation_resumes_and_never_looks_complete_when_interrupted(tmp_path, smoke_config):
    from mmcl.data.processed import load_processed

    raw = make_ave(tmp_path / "raw", classes=3, train=2, test=1, corrupt=False)
    adapter = interrupted_at(data_prep.adapter("ave"), 6)
    out = tmp_path / "ave"
    with pytest.raises(KeyboardInterrupt):
        run_preparation(adapter, raw, out, smoke_config, shard_size=2)
    assert not (out / "meta.json").exists() and not (out / "train.pt").exists()
    progress = json.loads((out / ".work" / "progress.json").read_text())
    assert len(progress["done"]) == 2  # two shards of two samples finished before the interruption
    config = smoke_with(tmp_path, "av-events", out, ["benchmarks.av-events.num_classes=3"])
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_processed(config.benchmarks["av-events"], "av-events")

    summary = run_preparation(data_prep.adapter("ave"), raw, out, smoke_config, shard_size=2)
    assert summary.resumed_shards == 2 and summary.counts == {"train": 6, "val": 3, "test": 3}
    train, test = load_processed(config.benchmarks["av-events"], "av-events")
    assert len(train) == 6 and len(test) == 3


@pytest.mark.parametrize("planted", ["crafted", "old-format"])
def test_a_shard_holding_other_objects_is_recomputed_without_running_it(tmp_path, smoke_config, caplog, planted):
    raw = make_ave(tmp_path / "raw", classes=3, train=2, test=1, corrupt=False)
    adapter = interrupted_at(data_prep.adapter("ave"), 4)
    out = tmp_path / "ave"
    with pytest.raises(KeyboardInterrupt):
        run_preparation(adapter, raw, out, smoke_config, shard_size=2)
    shard, marker = out / ".work" / "train-00000.pt", tmp_path / "executed"
    if planted == "crafted":
        plant_crafted_pickle(shard, marker)
    else:  # as an older format would have stored it: numpy arrays, not tensors
        stored = torch.load(shard, weights_only=True)
        torch.save({**stored, "labels": stored["labels"].numpy()}, shard)

    with caplog.at_level(logging.WARNING, logger="data_prep"):
        summary = run_preparation(data_prep.adapter("ave"), raw, out, smoke_config, shard_size=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"shard {shard} holds objects other than tensors and plain data (")
    assert warnings[0].endswith("; recomputing it")
    assert not marker.exists()
    assert summary.resumed_shards == 0 and summary.counts == {"train": 6, "val": 3, "test": 3}
    assert torch.load(out / "train.pt", weights_only=True)["labels"].tolist() == [0, 0, 1, 1, 2, 2]


def test_uestc_video_files_frame_folders_and_inertial_csv(tmp_path, smoke_config):
    from mmcl.engine import run

    raw = make_uestc(tmp_path / "raw")
    summary = data_prep.prepare("uestc-mmea-cl", raw, tmp_path / "uestc", smoke_config)
    assert summary.skipped == 0 and summary.counts == {"train": 12, "val": 6, "test": 6}  # val.txt: the val split
    assert summary.class_names[0] == "activity 1" and len(summary.class_names) == 6
    stored = torch.load(tmp_path / "uestc" / "train.pt", weights_only=True)
    assert set(stored["inputs"]) == {"video", "acc", "gyro"}
    assert stored["inputs"]["acc"].shape == (12, 3, 32, 32)
    assert not torch.equal(stored["inputs"]["acc"], stored["inputs"]["gyro"])

    config = smoke_with(tmp_path, "ego-activities", tmp_path / "uestc")
    result = run(config, "class_incremental", "finetune", seed=0)
    assert len(result.accuracy_matrix["standard"]) == 2


def test_command_line_prepares_and_reports(tmp_path, capsys):
    raw = make_uestc(tmp_path / "raw", classes=2)
    out = tmp_path / "cli"
    code = cli_main(["uestc-mmea-cl", "--raw", str(raw), "--out", str(out), "--profile", SMOKE, "--quiet",
                     "--option", "train_splits=[train.txt,val.txt]", "--option", "val_splits=[]",
                     "--shard-size", "3"])
    assert code == 0 and (out / "meta.json").is_file()
    printed = capsys.readouterr().out
    assert "samples: train 6, test 2" in printed and "skipped (unreadable files): 0" in printed


def test_samsemo_local_hub_copy_languages_as_domains(tmp_path, smoke_config):
    from mmcl.engine import run

    raw = make_samsemo(tmp_path / "raw")
    options = {"repository": str(raw), "languages": ["EN", "DE"]}
    data_prep.fetch("samsemo", raw, options)  # a local copy: nothing to download
    summary = data_prep.prepare("samsemo", raw, tmp_path / "samsemo", smoke_config, options=options)
    assert summary.skipped == 0 and summary.counts == {"train": 16, "val": 8, "test": 8}
    assert summary.class_names == EMOTIONS and summary.domain_names == ["EN", "DE"]
    stored = torch.load(tmp_path / "samsemo" / "train.pt", weights_only=True)
    assert stored["texts"]["text"][0].startswith("EN words about")
    assert sorted(set(stored["domains"].tolist())) == [0, 1]

    config = smoke_with(tmp_path, "multilingual-emotion", tmp_path / "samsemo")
    result = run(config, "domain_incremental", "finetune", seed=0)
    assert len(result.accuracy_matrix["standard"]) == 2
    # One language only: the reader keeps that domain's samples.
    single = smoke_with(tmp_path, "multilingual-emotion", tmp_path / "samsemo",
                        ["benchmarks.multilingual-emotion.domains=[de]"])
    from mmcl.data.processed import load_processed

    train, _ = load_processed(single.benchmarks["multilingual-emotion"], "multilingual-emotion")
    assert len(train) == 8 and train.domain_names == ["de"] and set(train.domains.tolist()) == {0}


def test_modality_stream_image_from_local_datasets_and_esc50(tmp_path, smoke_config):
    raw = make_stream_image_audio(tmp_path / "raw")
    options = {"modalities": ["image", "audio"],
               "image": {"kind": "hf", "dir": "image/hf", "classes": ["cat", "dog", "fish"]}}
    summary = data_prep.prepare("modality-stream", raw, tmp_path / "stream", smoke_config, options=options)
    # image: 3 classes x (3 train + 2 test); audio: ESC-10 has dog, rain, crying baby; fold 5 = test
    assert summary.counts == {"train": 9 + 6, "test": 6 + 3} and summary.skipped == 0
    assert summary.class_names == ["cat", "dog", "fish", "crying baby", "dog (audio)", "rain"]
    meta = json.loads((tmp_path / "stream" / "meta.json").read_text())
    assert meta["class_modalities"] == ["image"] * 3 + ["audio"] * 3
    stored = torch.load(tmp_path / "stream" / "train.pt", weights_only=True)
    assert stored["inputs"]["image"].shape[0] == 9 and stored["inputs"]["audio"].shape[0] == 6  # stored sparse

    config = smoke_with(tmp_path, "modality-stream", tmp_path / "stream")
    benchmark = load_benchmark(config, "modality-stream")
    train = benchmark.train
    # No validation list: round(0.2 x n), at least one, of each class's 2-3 training samples is carved.
    assert not (tmp_path / "stream" / "val.pt").exists() and len(benchmark.val) == 6
    assert sorted(benchmark.val.labels.tolist()) == list(range(6))
    assert train.inputs["image"].shape == (9, 3, 32, 32)  # dense for the engine
    image_rows = torch.tensor([m == "image" for m in meta["class_modalities"]])[train.labels]
    assert train.inputs["image"][~image_rows].sum() == 0 and train.inputs["audio"][image_rows].sum() == 0
    assert train.inputs["image"][image_rows].float().mean() > 0


def test_modality_stream_ucf101_and_sunrgbd_depth(tmp_path, smoke_config):
    raw = make_stream_video_depth(tmp_path / "raw")
    options = {"modalities": ["video", "depth"], "video": {"classes": ["Biking", "Typing"]},
               "depth": {"classes": ["bedroom", "kitchen", "office"], "test_fraction": 0.3}}
    summary = data_prep.prepare("modality-stream", raw, tmp_path / "stream", smoke_config, options=options)
    assert summary.class_names == ["biking", "typing", "bedroom", "kitchen", "office"]
    assert summary.counts["train"] + summary.counts["test"] == 6 + 12 and summary.skipped == 0
    stored = torch.load(tmp_path / "stream" / "train.pt", weights_only=True)
    assert stored["inputs"]["depth"].shape[1:] == (3, 32, 32) and stored["inputs"]["video"].shape[1:] == (2, 3, 32, 32)
    depth = stored["inputs"]["depth"][0, 0].float()
    assert depth[:, -1].mean() > depth[:, 0].mean()  # the bit-rotated PNG decodes to increasing depth


def test_depth_png_bit_rotation_round_trip(tmp_path):
    from data_prep.decode import depth_png

    metres = np.array([[0.0, 1.5], [2.25, 9.0]])
    raw = (metres * 1000).astype(np.uint32)
    path = tmp_path / "d.png"
    Image.fromarray((((raw << 3) | (raw >> 13)) & 0xFFFF).astype(np.uint16)).save(path)
    decoded = depth_png(path)
    assert np.isnan(decoded[0, 0]) and np.allclose(decoded[1], [2.25, 9.0]) and np.isclose(decoded[0, 1], 1.5)


def test_open_clip_weights_from_a_local_file(tmp_path):
    """model.pretrained=<file> goes through open_clip.create_model exactly like a tag."""
    import open_clip

    from mmcl.models.factory import build_encoder

    torch.manual_seed(3)
    reference = open_clip.create_model("mmcl-micro", pretrained=None, force_image_size=32)
    weights = tmp_path / "micro-weights.pt"
    torch.save(reference.state_dict(), weights)
    config = load_config(SMOKE, [f"model.pretrained={weights}"])
    encoder = build_encoder(config)
    loaded = encoder.clip.state_dict()
    assert loaded.keys() == reference.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(FileNotFoundError):
        build_encoder(load_config(SMOKE, [f"model.pretrained={tmp_path / 'absent.pt'}"]))


def test_paper_profile_matches_the_prepared_datasets():
    config = load_config("paper")
    assert config.model.name == "ViT-B-16" and config.model.precision == "bf16"
    specs = config.benchmarks
    assert (specs["av-events"].num_classes, specs["av-events"].num_tasks) == (28, 4)
    assert (specs["ego-activities"].num_classes, specs["ego-activities"].num_tasks) == (32, 4)
    assert specs["multilingual-emotion"].domains == ["EN", "DE", "ES", "PL", "KO"]
    assert all(spec.source == "processed" and spec.path for spec in specs.values())
    assert set(data_prep.BENCHMARK_OF.values()) == set(specs)
    assert {"EN", "DE", "ES", "PL", "KO"} == set(data_prep.adapter("samsemo").options["languages"])


def test_skipping_stops_above_the_allowed_fraction_and_resumes_once_the_file_is_replaced(tmp_path, capsys):
    raw = make_ave(tmp_path / "raw", classes=2, train=3, test=1)  # vid0x0.mp4 (1 of 6 train) is truncated
    out = tmp_path / "ave"
    args = ["ave", "--raw", str(raw), "--out", str(out), "--profile", SMOKE, "--quiet", "--shard-size", "2"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: ave: 1 of 6 train samples (16.7%) are unreadable, more than the allowed 5.0%; replace "
                   "the files listed above, or raise the limit (--max-skipped-fraction / max_skipped_fraction)")
    assert not (out / "meta.json").exists() and not (out / "train.pt").exists()

    write_mp4(raw / "AVE" / "vid0x0.mp4", shade=0, tone=300)  # the user re-downloads the bad file
    assert cli_main(args) == 0
    assert "samples: train 6, val 2, test 2" in capsys.readouterr().out  # the shard with the failure was redone

    raw = make_ave(tmp_path / "raw2", classes=2, train=3, test=1)
    assert cli_main([*args[:2], str(raw), "--out", str(tmp_path / "allowed"), *args[5:],
                     "--max-skipped-fraction", "0.2"]) == 0
    assert "skipped (unreadable files): 1" in capsys.readouterr().out


def test_a_class_losing_all_its_samples_stops_the_preparation(tmp_path, smoke_config):
    raw = make_ave(tmp_path / "raw", classes=3, train=1, test=1)  # class 0's only train file is truncated
    with pytest.raises(data_prep.PrepError, match=r"^ave: every train sample of class 'event 0' is unreadable"):
        data_prep.prepare("ave", raw, tmp_path / "ave", smoke_config, max_skipped_fraction=0.5)
    assert not (tmp_path / "ave" / "meta.json").exists()


def test_prepared_sizes_must_match_the_profile(tmp_path, smoke_config):
    raw = make_ave(tmp_path / "raw", classes=2, train=1, test=1, corrupt=False)
    data_prep.prepare("ave", raw, tmp_path / "ave", smoke_config)
    config = smoke_with(tmp_path, "av-events", tmp_path / "ave", ["benchmarks.av-events.num_classes=2",
                                                                  "data.image_size=64", "data.audio.n_mels=64"])
    with pytest.raises(ConfigError) as error:
        load_benchmark(config, "av-events")
    assert str(error.value) == (
        "benchmark 'av-events': data.image_size: prepared at 32, profile says 64; data.audio.n_mels: prepared at 32, "
        "profile says 64; re-run the preparation with this profile or set data.image_size=32 data.audio.n_mels=32")
    # Sizes of modalities the benchmark does not have (inertial) do not matter.
    config = smoke_with(tmp_path, "av-events", tmp_path / "ave", ["benchmarks.av-events.num_classes=2",
                                                                  "data.inertial.n_fft=8"])
    train, test = load_benchmark(config, "av-events").train, load_benchmark(config, "av-events").test
    assert (len(train), len(test)) == (2, 2) and train.inputs["video"].shape[-1] == 32


def make_recurring_sources(root: Path) -> Path:
    """Second datasets in their real formats: a CIFAR-100-shaped `datasets` folder (img, fine_label),
    Speech Commands (<word>/*.wav + testing_list.txt) and HMDB51 (<action>/*.avi + split lists)."""
    import datasets

    features = datasets.Features({"img": datasets.Image(),
                                  "fine_label": datasets.ClassLabel(names=["apple", "bicycle", "castle"])})
    splits = {}
    for split, per_class in (("train", 3), ("test", 2)):
        images, labels = [], []
        for label in range(3):
            for j in range(per_class):
                picture = np.full((32, 32, 3), 30 * (label + 1) + j, np.uint8)
                images.append(Image.fromarray(picture))
                labels.append(label)
        splits[split] = datasets.Dataset.from_dict({"img": images, "fine_label": labels}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root / "image2" / "cifar100"))
    speech = root / "audio2" / "speech_commands"
    test = []
    for k, word in enumerate(["yes", "no", "stop"]):
        for j in range(4):
            write_wav(speech / word / f"{j:08x}_nohash_0.wav", tone=300 + 150 * k + 5 * j, sample_rate=16000)
        test.append(f"{word}/{3:08x}_nohash_0.wav")
    (speech / "testing_list.txt").write_text("\n".join(test) + "\n")
    lists = root / "video2" / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    for k, action in enumerate(["cartwheel", "fencing"]):
        rows = []
        for j, flag in enumerate((1, 1, 2, 0)):
            name = f"{action}_clip_{j}.avi"
            write_mp4(root / "video2" / "hmdb51" / action / name, shade=50 * (k + 1), audio=False)
            rows.append(f"{name} {flag} ")
        (lists / f"{action}_test_split1.txt").write_text("\n".join(rows) + "\n")
    return root


def test_modality_stream_recurring_second_datasets_and_the_stream(tmp_path, smoke_config):
    raw = make_recurring_sources(make_stream_image_audio(tmp_path / "raw"))
    options = {"modalities": ["image", "audio"], "recurring": ["image", "audio"],
               "image": {"kind": "hf", "dir": "image/hf", "classes": ["cat", "dog", "fish"]},
               "audio": {"classes": ["dog", "rain"]},
               "image2": {"classes": ["apple", "castle"]}, "audio2": {"classes": ["yes", "no", "stop"]}}
    summary = data_prep.prepare("modality-stream-recurring", raw, tmp_path / "stream", smoke_config, options=options)
    assert summary.skipped == 0
    assert summary.class_names == ["cat", "dog", "fish", "dog (audio)", "rain", "apple", "castle",
                                   "the word yes", "the word no", "the word stop"]
    # image 3 x (3 + 2); ESC-10 dog, rain: folds 1, 2 train, 5 test; CIFAR 2 x (3 + 2); Speech Commands 3 x (3 + 1)
    assert summary.counts == {"train": 9 + 4 + 6 + 9, "test": 6 + 2 + 4 + 3}
    meta = json.loads((tmp_path / "stream" / "meta.json").read_text())
    assert meta["class_modalities"] == ["image"] * 3 + ["audio"] * 2 + ["image"] * 2 + ["audio"] * 3
    assert meta["class_sources"] == ["image"] * 3 + ["audio"] * 2 + ["image2"] * 2 + ["audio2"] * 3

    config = smoke_with(tmp_path, "modality-stream-recurring", tmp_path / "stream",
                        ["benchmarks.modality-stream-recurring.num_classes=10",
                         "benchmarks.modality-stream-recurring.num_tasks=4",
                         "benchmarks.modality-stream-recurring.modality_tasks={image: 2, audio: 2}"])
    from mmcl.data.scenarios import build_stream

    stream = build_stream("modality_incremental", load_benchmark(config, "modality-stream-recurring"), seed=0)
    names = stream.class_names
    for task in stream.tasks:
        first = [t for t in stream.tasks if t.modality == task.modality][0] is task
        expected = {"image": ({"cat", "dog", "fish"}, {"apple", "castle"}),
                    "audio": ({"dog (audio)", "rain"}, {"the word yes", "the word no", "the word stop"})}
        assert {names[c] for c in task.classes} == expected[task.modality][0 if first else 1]


def test_hmdb51_split_lists_and_videos(tmp_path):
    raw = make_recurring_sources(make_stream_image_audio(tmp_path / "raw"))
    adapter = data_prep.adapter("modality-stream-recurring", {"modalities": ["video"], "recurring": ["video"],
                                                              "video2": {"classes": ["cartwheel", "fencing"]}})
    items, names = adapter._list_video2(raw, adapter.options["video2"])
    assert names == ["cartwheel", "fencing"]
    assert [(i.split, i.label) for i in items] == [("train", 0), ("train", 0), ("test", 0),
                                                   ("train", 1), ("train", 1), ("test", 1)]  # flag 0: unused
    from data_prep import decode

    frames = decode.video_frames(items[0].files["video"], 2)
    assert frames.shape[0] == 2


def test_prepare_data_generates_the_benchmarks_in_a_worker_while_pre_training(tmp_path, monkeypatch):
    from mmcl import executors, reproduce
    from mmcl.data import benchmarks as benchmark_module
    from mmcl.models.factory import build_encoder

    def config_in(folder):  # a backbone of 5 steps: not in any cache, so prepare_data pre-trains it
        return load_config("smoke", [f"data.cache_dir={folder}", "model.pretrain.steps=5"])

    reference = config_in(tmp_path / "here")  # the benchmarks generated in this process
    tokenizer = build_encoder(reference).tokenizer
    expected = {name: benchmark_module.load_benchmark(reference, name, tokenizer).digest()
                for name in reference.benchmarks}

    def not_here(*args, **kwargs):
        raise AssertionError("generated in the process that pre-trains")

    monkeypatch.setattr(executors, "cpu_cores", lambda: 2)
    monkeypatch.setattr(benchmark_module, "generate_synthetic", not_here)  # the spawned worker has its own
    prepared = reproduce.prepare_data(config_in(tmp_path / "worker"))
    assert {name: b.digest() for name, b in prepared.items()} == expected
    # a backbone per seed of the profile (runtime.seeds), pre-trained in the workers; seed 0's bitwise
    # the one this process pre-trained
    from mmcl.models.factory import file_digest
    from mmcl.models.pretraining import tiny_cache_path

    worker = config_in(tmp_path / "worker")
    paths = [tiny_cache_path(worker.model_copy(update={"seed": s})) for s in worker.runtime.seeds]
    assert len(set(paths)) == len(worker.runtime.seeds) == 3 and all(p.is_file() for p in paths)
    assert file_digest(paths[0]) == file_digest(tiny_cache_path(reference))
