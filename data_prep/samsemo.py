"""SAMSEMO: multilingual and multimodal emotion recognition (Bujnowski et al., Interspeech 2024).

Published on the Hugging Face hub as the dataset repository ``SamsungNLP/SAMSEMO`` (CC BY 4.0):
``samsemo.tsv`` (one row per utterance: ``utterance_id``, ``language`` EN/DE/ES/PL/KO, the
transcript and the emotion annotation, among other columns), ``splits/`` with the utterance ids
of each split per language (``train_split_EN.txt``, ``valid_split_EN.txt``, ``test_split_EN.txt``
as read by the publisher's code) and ``data/`` with one zip per language holding, per utterance,
the scene's mp4, ``audio.wav`` and extracted jpg frames.

The domain of a sample is its language (one language per domain-incremental task). Not verified
here (no copy was reachable): the names of the emotion and transcript columns of ``samsemo.tsv``
(the options ``label_column`` / ``text_column`` name them; by default the first present of a few
likely names is used) and the folder nesting inside the zips (utterance folders are found by
name anywhere under ``data/``).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from data_prep import decode
from data_prep.core import DatasetAdapter, Item, MissingRawData, Plan, PrepError

LABEL_CANDIDATES = ("emotion", "aggregated_emotion", "emotion_label", "label")
TEXT_CANDIDATES = ("text", "transcript", "transcription", "utterance_text", "utterance")


class SAMSEMO(DatasetAdapter):
    name = "samsemo"
    modalities = ("video", "audio", "text")
    description = "SAMSEMO: emotion labels of movie/TV utterances in EN, DE, ES, PL, KO (video, audio, transcript)"
    source = ("https://huggingface.co/datasets/SamsungNLP/SAMSEMO (fetched with huggingface_hub: "
              "python -m data_prep samsemo --fetch --raw <raw>)")
    licence = "CC BY 4.0 (dataset card); the scenes come from public videos, see the card's disclaimer"
    layout = """\
    <raw>/                               a copy of the hub repository SamsungNLP/SAMSEMO
      samsemo.tsv                        utterance_id, language, transcript, emotion, ... (tab-separated)
      splits/{train,valid,test}_split_<LANG>.txt   one utterance_id per line
      data/<LANG>.zip  or extracted:  data/**/<utterance_id>/{*.mp4, audio.wav, *.jpg}"""
    default_options: ClassVar[dict] = {
        "repository": "SamsungNLP/SAMSEMO",  # hub id, or a local folder holding a copy of it
        "revision": None,
        "languages": ["EN", "DE", "ES", "PL", "KO"],
        "train_splits": ["train"],
        "val_splits": ["valid"],  # the validation split written as val.pt ([]: carved from train)
        "test_splits": ["test"],
        "metadata": "samsemo.tsv",
        "id_column": "utterance_id",
        "language_column": "language",
        "label_column": None,  # None: the first of LABEL_CANDIDATES present
        "text_column": None,  # None: the first of TEXT_CANDIDATES present
        "classes": None,  # a list fixes the emotion classes and their order; others are dropped
        "extract_zips": True,
    }

    def fetch(self, raw_dir: Path) -> None:
        """Copy of the hub repository into ``raw_dir`` (only the chosen languages' archives)."""
        source = self.options["repository"]
        if Path(source).expanduser().is_dir():
            return  # a local copy: prepare reads it in place (pass it as --raw)
        from huggingface_hub import snapshot_download

        languages = self.options["languages"]
        patterns = ["samsemo.tsv", "splits/*", "metadata/*", "README.md"] + \
                   [f"data/*{language}*" for language in languages]
        snapshot_download(repo_id=source, repo_type="dataset", revision=self.options["revision"],
                          local_dir=str(raw_dir), allow_patterns=patterns)

    def list_items(self, raw_dir: Path) -> Plan:
        import pandas as pd

        metadata_path = self.require(raw_dir / self.options["metadata"], raw_dir, "metadata file")
        data_dir = self.require(raw_dir / "data", raw_dir, "data folder")
        table = pd.read_csv(metadata_path, sep="\t", dtype=str, keep_default_na=False)
        label_column = self._column(table, self.options["label_column"], LABEL_CANDIDATES, "label_column")
        text_column = self._column(table, self.options["text_column"], TEXT_CANDIDATES, "text_column")
        id_column, language_column = self.options["id_column"], self.options["language_column"]
        for column in (id_column, language_column):
            if column not in table.columns:
                raise PrepError(f"samsemo: column {column!r} not in {metadata_path} (columns: {list(table.columns)})")
        rows = table.set_index(id_column)
        languages = [language.upper() for language in self.options["languages"]]
        split_ids: dict[tuple[str, str], list[str]] = {}
        for language in languages:
            for split, names in (("train", self.options["train_splits"]), ("val", self.options["val_splits"]),
                                 ("test", self.options["test_splits"])):
                ids = split_ids.setdefault((split, language), [])
                for name in names:
                    path = self.require(raw_dir / "splits" / f"{name}_split_{language}.txt", raw_dir, "split list")
                    ids += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if self.options["extract_zips"]:
            self._extract(data_dir, languages)
        folders = self._utterance_folders(data_dir, {i for ids in split_ids.values() for i in ids})
        labels = {i: str(rows.at[i, label_column]).strip().lower() for ids in split_ids.values() for i in ids
                  if i in rows.index}
        class_names = list(self.options["classes"] or sorted({v for v in labels.values() if v}))
        index = {name: k for k, name in enumerate(class_names)}
        items, notes, unlisted = [], [], 0
        for (split, language), ids in split_ids.items():
            for utterance in ids:
                if utterance not in rows.index or labels.get(utterance) not in index:
                    unlisted += 1
                    continue
                folder = folders.get(utterance, data_dir / language / utterance)
                items.append(Item(key=utterance, split=split, label=index[labels[utterance]],
                                  domain=languages.index(language), text=str(rows.at[utterance, text_column]),
                                  files={"folder": str(folder)}))
        if unlisted:
            notes.append(f"{unlisted} split entries left out: not in {metadata_path.name} or label not in {class_names}")
        return Plan(items, class_names, languages, notes=notes)

    @staticmethod
    def _column(table, chosen: str | None, candidates: tuple[str, ...], option: str) -> str:
        if chosen:
            if chosen not in table.columns:
                raise PrepError(f"samsemo: {option}={chosen!r} is not a column of the metadata ({list(table.columns)})")
            return chosen
        for name in candidates:
            if name in table.columns:
                return name
        raise PrepError(f"samsemo: none of {candidates} is a column of the metadata ({list(table.columns)}); "
                        f"set the option {option}")

    @staticmethod
    def _extract(data_dir: Path, languages: list[str]) -> None:
        """Unpack each language archive once (a marker file records a finished extraction)."""
        for archive in sorted(data_dir.glob("*.zip")):
            if not any(language in archive.stem.upper() for language in languages):
                continue
            marker = data_dir / f".{archive.name}.extracted"
            if marker.is_file():
                continue
            try:
                with zipfile.ZipFile(archive) as bundle:
                    bundle.extractall(data_dir)
            except zipfile.BadZipFile as error:
                raise MissingRawData(f"samsemo: {archive} is not a valid zip ({error}); download it again") from error
            marker.write_text("ok\n")

    @staticmethod
    def _utterance_folders(data_dir: Path, wanted: set[str]) -> dict[str, Path]:
        found = {}
        for root, directories, _ in os.walk(data_dir):
            for name in directories:
                if name in wanted:
                    found[name] = Path(root) / name
        return found

    def decode(self, item: Item, settings) -> dict:
        folder = Path(item.files["folder"])
        if not folder.is_dir():
            raise decode.DecodeError(folder, "utterance folder not found under data/")
        videos = sorted(folder.glob("*.mp4"))
        frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if videos:
            video = decode.video_frames(videos[0], settings.video_frames)
        elif frames:
            picks = decode.sample_frame_indices(len(frames), settings.video_frames)
            video = np.stack([decode.image_rgb(frames[i]) for i in picks])
        else:
            raise decode.DecodeError(folder, "no mp4 and no frames")
        wav = folder / "audio.wav"
        if wav.is_file():
            audio = decode.wav_audio(wav, settings.audio.sample_rate)
        elif videos:
            audio = decode.container_audio(videos[0], settings.audio.sample_rate)
        else:
            raise decode.DecodeError(folder, "no audio.wav and no mp4 with audio")
        return {"video": video, "audio": audio}
