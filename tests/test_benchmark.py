"""The embedded benchmark: deterministic bytes, disjoint concepts, the modality pipeline's shapes."""
import hashlib
import logging
import threading

import numpy as np
import pytest
import torch

from mmcl import records
from mmcl.config import AudioConfig, ConfigError, InertialConfig, load_config
from mmcl.data import modalities as pipeline
from mmcl.data import benchmarks, synthetic
from mmcl.data.benchmarks import generate_synthetic, load_benchmark, synthetic_cache_path

from crafted_files import plant_crafted_pickle


def digest(dataset) -> str:
    hasher = hashlib.sha256()
    for name in sorted(dataset.inputs):
        if name != "text":
            hasher.update(dataset.inputs[name].numpy().tobytes())
    hasher.update(dataset.labels.numpy().tobytes())
    hasher.update("\n".join(dataset.texts.get("text", [])).encode())
    return hasher.hexdigest()


@pytest.fixture(scope="module")
def small_config():
    return load_config("smoke", ["data.train_per_class=3", "data.test_per_class=2"])


def test_same_seed_same_bytes_other_seed_other_bytes(small_config):
    spec = small_config.benchmarks["multilingual-emotion"]  # video + audio + text, two domains
    first, second = generate_synthetic(small_config, spec), generate_synthetic(small_config, spec)
    assert digest(first[0]) == digest(second[0]) and digest(first[1]) == digest(second[1])
    other = load_config("smoke", ["data.train_per_class=3", "data.test_per_class=2", "data.benchmark_seed=99"])
    assert digest(generate_synthetic(other, spec)[0]) != digest(first[0])


def test_a_chunk_does_not_depend_on_what_else_is_generated(small_config):
    # Same class 0 audio whether or not video is generated beside it.
    both = generate_synthetic(small_config, small_config.benchmarks["av-events"])[0]
    audio_only = small_config.benchmarks["av-events"].model_copy(update={"modalities": ["audio"]})
    alone = generate_synthetic(small_config, audio_only)[0]
    assert torch.equal(both.inputs["audio"], alone.inputs["audio"])


def test_train_and_test_differ_and_are_balanced(small_config):
    train, test = generate_synthetic(small_config, small_config.benchmarks["av-events"])
    assert torch.bincount(train.labels).tolist() == [3] * 4
    assert torch.bincount(test.labels).tolist() == [2] * 4
    assert not torch.equal(train.inputs["video"][:2], test.inputs["video"][:2])


def test_continual_and_pretraining_concepts_are_disjoint_and_cover_every_attribute():
    continual = synthetic.continual_concepts()
    pretraining = synthetic.pretraining_concepts()
    assert len(continual) == 64 and len(pretraining) == 192
    assert {c.index for c in continual}.isdisjoint({c.index for c in pretraining})
    for attribute in ("shape", "colour", "texture"):
        assert {getattr(c, attribute) for c in continual} == {getattr(c, attribute) for c in pretraining}
    assert len({c.name for c in continual}) == 64


def test_captions_use_the_domain_language():
    rng = np.random.default_rng(0)
    concept = synthetic.continual_concepts()[0]
    german = synthetic.write_captions(concept, 20, "de", rng)
    words = set(" ".join(german).split())
    vocabulary = synthetic.VOCABULARY["de"]
    assert words & set(vocabulary["colours"] + vocabulary["shapes"] + vocabulary["textures"])
    assert synthetic.language_of("PL") == "pl" and synthetic.language_of("default") == "en"


def test_pipeline_shapes_and_dtypes():
    n, size = 3, 32
    assert pipeline.images_to_tensor(np.random.rand(n, 40, 50, 3), size).shape == (n, 3, size, size)
    video = pipeline.video_to_tensor(np.random.randint(0, 255, (n, 10, 20, 20, 3), dtype=np.uint8), size, 4)
    assert video.shape == (n, 4, 3, size, size) and video.dtype == torch.uint8
    audio = pipeline.audio_to_tensor(np.random.randn(n, 4000).astype(np.float32), AudioConfig(duration=0.5), size)
    assert audio.shape == (n, 3, size, size)
    inertial = pipeline.inertial_to_tensor(np.random.randn(n, 3, 100), InertialConfig(), size)
    assert inertial.shape == (n, 3, size, size)


def test_frame_sampling_is_uniform():
    assert pipeline.sample_frame_indices(8, 4).tolist() == [1, 3, 5, 7]
    assert pipeline.sample_frame_indices(2, 4).tolist() == [0, 0, 1, 1]


def test_depth_missing_pixels_and_normalisation():
    depth = np.array([[[1.0, 3.0], [np.nan, 2.0]]], dtype=np.float32)
    image = pipeline.depth_to_tensor(depth, 2)
    assert image[0, 0].tolist() == [[0, 255], [0, 128]]


def test_log_mel_is_librosa_power_db():
    import librosa

    cfg = AudioConfig(sample_rate=8000, duration=0.25, n_fft=256, hop_length=128, n_mels=16)
    wave = np.sin(2 * np.pi * 440 * np.arange(2000) / 8000).astype(np.float32)[None]
    expected = librosa.power_to_db(librosa.feature.melspectrogram(y=wave[0], sr=8000, n_fft=256, hop_length=128,
                                                                  n_mels=16), ref=1.0, top_db=None)
    np.testing.assert_allclose(pipeline.log_mel(wave, cfg)[0], expected, rtol=1e-5, atol=1e-4)


def test_pipeline_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        pipeline.images_to_tensor(np.zeros((2, 8, 8)), 8)
    with pytest.raises(ValueError, match=r"\[N, 3, samples\]"):
        pipeline.inertial_to_tensor(np.zeros((2, 6, 10)), InertialConfig(), 8)


def test_benchmark_cache_is_reused_and_corrupt_cache_rebuilt(tmp_path, small_config):
    config = small_config.model_copy(update={"data": small_config.data.model_copy(update={"cache_dir": str(tmp_path)})})
    first = load_benchmark(config, "ego-activities")
    cached = list((tmp_path / "benchmarks").glob("ego-activities-*.pt"))
    assert len(cached) == 1
    cached[0].write_bytes(b"truncated")
    again = load_benchmark(config, "ego-activities")
    assert torch.equal(first.train.inputs["acc"], again.train.inputs["acc"])


@pytest.mark.parametrize("planted", ["crafted", "old-format"])
def test_a_cache_holding_other_objects_is_generated_again_without_running_it(tmp_path, small_config, caplog, planted):
    config = small_config.model_copy(update={"data": small_config.data.model_copy(update={"cache_dir": str(tmp_path)})})
    first = load_benchmark(config, "ego-activities")
    path = synthetic_cache_path(config, "ego-activities")
    marker = tmp_path / "executed"
    if planted == "crafted":
        plant_crafted_pickle(path, marker)
    else:  # as an older format would have stored it: numpy arrays among the tensors
        stored = records.load_tensors(path)
        torch.save({split: {**data, "labels": data["labels"].numpy()} for split, data in stored.items()}, path)
    with caplog.at_level(logging.WARNING, logger="mmcl.data.benchmarks"):
        again = load_benchmark(config, "ego-activities")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"benchmark cache {path} holds objects other than tensors and plain data (")
    assert warnings[0].endswith("; generating it again")
    assert not marker.exists()
    assert again.digest() == first.digest()  # the same data, generated again
    assert isinstance(records.load_tensors(path)["train"]["labels"], torch.Tensor)  # into a file of plain data


def test_a_benchmark_being_generated_elsewhere_is_waited_for_and_read(tmp_path, small_config, monkeypatch):
    # two processes sharing a cache (pool workers, test workers) start on one benchmark: one generates it
    config = small_config.model_copy(update={"data": small_config.data.model_copy(update={"cache_dir": str(tmp_path)})})
    first = load_benchmark(config, "ego-activities")
    path = synthetic_cache_path(config, "ego-activities")
    stored = path.read_bytes()
    path.unlink()
    generated = []
    monkeypatch.setattr(benchmarks, "generate_synthetic", lambda *a, **k: generated.append(1) / 0)
    loaded = []
    with records.build_lock(path):  # another process is generating it
        waiter = threading.Thread(target=lambda: loaded.append(load_benchmark(config, "ego-activities")))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # it waits, and generates nothing
        path.write_bytes(stored)  # the other process's file
    waiter.join(timeout=60)
    assert generated == [] and len(loaded) == 1
    assert torch.equal(loaded[0].train.inputs["acc"], first.train.inputs["acc"])


def test_unknown_benchmark_and_too_many_classes(small_config):
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        load_benchmark(small_config, "nope")
    big = load_config("smoke", ["benchmarks.av-events.num_classes=65"])
    with pytest.raises(ConfigError, match="at most 64"):
        generate_synthetic(big, big.benchmarks["av-events"], label="av-events")


def test_no_pretraining_caption_names_a_continual_class():
    rng = np.random.default_rng(0)
    captions = {c for concept in synthetic.pretraining_concepts() for c in synthetic.pretraining_captions(concept, 40, rng)}
    words = {w.strip(".") for caption in captions for w in caption.split()}
    for concept in synthetic.continual_concepts():
        assert not any(concept.name in caption for caption in captions)
        # No caption names the whole (colour, texture, shape) combination of a continual class.
        attributes = {synthetic.COLOURS[concept.colour], synthetic.TEXTURES[concept.texture],
                      synthetic.SHAPES[concept.shape]}
        assert not any(attributes <= set(w.strip(".") for w in caption.split()) for caption in captions)
    for caption in captions:  # a texture is captioned alone, never with a colour or a shape
        named = {w.strip(".") for w in caption.split()}
        assert not (named & set(synthetic.TEXTURES) and named & set(synthetic.COLOURS + synthetic.SHAPES)), caption
    assert words >= set(synthetic.COLOURS) | set(synthetic.SHAPES) | set(synthetic.TEXTURES)  # every attribute is


def test_continual_classes_come_in_pairs_the_captions_cannot_tell_apart():
    concepts = synthetic.continual_concepts()
    for first, second in zip(concepts[::2], concepts[1::2]):
        assert (first.shape, first.colour) == (second.shape, second.colour) and first.texture != second.texture
    assert len({(c.shape, c.colour) for c in concepts}) == 32


def test_version_5_keeps_the_pretraining_concepts_of_version_4():
    # The backbones' cache key says PRETRAINING_VERSION: the set of continual concepts (and so of
    # pre-training concepts) must be the one version 4 held out. Version 4's rule, written out:
    pool = [(s, c) for s in range(8) for c in range(8) if (s + c) % 2 == 0]
    held_out = {synthetic.Concept(s, c, t).index for s, c in pool
                for t in (((s + c) // 2) % 2, ((s + c) // 2) % 2 + 2)}
    assert {c.index for c in synthetic.continual_concepts()} == held_out
    assert synthetic.PRETRAINING_VERSION == 4 and synthetic.GENERATOR_VERSION == 5


def _hue_degrees(rgb: np.ndarray) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*rgb)[0] * 360


def _centre_hue(style: str, domain: int) -> float:
    concept = synthetic.Concept(shape=0, colour=0, texture=0)  # a plain red circle, the centre always inside
    images = synthetic.render_images(concept, 8, 32, synthetic.DomainStyle(domain, style), np.random.default_rng(domain))
    return _hue_degrees(images[:, 14:18, 14:18].mean(axis=(0, 1, 2)))


def _dominant_pitch(style: str, domain: int) -> float:
    concept = synthetic.Concept(shape=2, colour=0, texture=0)  # plain texture: a pure tone at f0
    waves = synthetic.synthesize_audio(concept, 4, 8000, 1.0, synthetic.DomainStyle(domain, style),
                                       np.random.default_rng(domain))
    spectrum = np.abs(np.fft.rfft(waves, axis=1)).mean(axis=0)
    return float(np.fft.rfftfreq(waves.shape[1], 1 / 8000)[spectrum.argmax()])


def test_depth_maps_keep_the_plateau_height_after_normalisation():
    from mmcl.data.modalities import depth_to_tensor

    def plateau(colour: int) -> float:
        concept = synthetic.Concept(shape=1, colour=colour, texture=0)  # a plain square
        maps = synthetic.render_depth(concept, 8, 32, synthetic.DomainStyle(0, "speaker"), np.random.default_rng(0))
        return float(depth_to_tensor(maps, 32)[:, 0, 14:18, 14:18].float().mean())
    levels = [plateau(c) for c in range(8)]
    assert all(b > a + 5 for a, b in zip(levels, levels[1:]))  # higher for each colour, by > 5 of 255


def test_speaker_domains_keep_the_class_cues_and_conflicting_domains_move_them():
    f0 = 170.0 * 2 ** 0.6
    for domain in range(5):
        # Hue within a few degrees of red (0 degrees) and pitch within the 2 % per-sample jitter.
        assert min(_centre_hue("speaker", domain), 360 - _centre_hue("speaker", domain)) < 6
        assert abs(_dominant_pitch("speaker", domain) / f0 - 1) < 0.03
    assert min(abs(_centre_hue("conflicting", d) - 0) % 360 for d in (1,)) > 30
    assert _dominant_pitch("conflicting", 3) / f0 > 2 ** (2.5 / 12)  # three semitones up
    assert _dominant_pitch("conflicting", 4) / f0 < 2 ** (-2.5 / 12)


def test_speaker_domains_change_the_recording():
    concept = synthetic.continual_concepts()[0]
    images = [synthetic.render_images(concept, 4, 32, synthetic.DomainStyle(d, "speaker"), np.random.default_rng(0))
              for d in (0, 1)]
    assert np.abs(images[0][:, :4, :4].mean() - images[1][:, :4, :4].mean()) > 0.1  # background
    with pytest.raises(ValueError, match="unknown domain style"):
        synthetic.DomainStyle(0, "shifted")


def test_profiles_have_the_stress_benchmark_with_conflicting_domains():
    for profile in ("smoke", "tiny"):
        config = load_config(profile)
        assert config.benchmarks["multilingual-emotion"].domain_style == "speaker"
        assert config.benchmarks["multilingual-emotion-stress"].domain_style == "conflicting"
        assert "stress test" in config.benchmarks["multilingual-emotion-stress"].description


def test_generator_and_pretraining_versions_key_the_caches(tmp_path, small_config, monkeypatch):
    from mmcl.models.pretraining import tiny_cache_path

    config = small_config.model_copy(update={"data": small_config.data.model_copy(update={"cache_dir": str(tmp_path)})})
    spec = config.benchmarks["ego-activities"].model_copy(update={"modalities": ["acc"]})
    config = config.model_copy(update={"benchmarks": {**config.benchmarks, "ego-activities": spec}})
    load_benchmark(config, "ego-activities")
    backbone = tiny_cache_path(config)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    load_benchmark(config, "ego-activities")
    assert len(list((tmp_path / "benchmarks").glob("ego-activities-*.pt"))) == 2
    assert tiny_cache_path(config) == backbone  # pre-training reads nothing the benchmark version changes
    monkeypatch.setattr(synthetic, "PRETRAINING_VERSION", synthetic.PRETRAINING_VERSION + 1)
    assert tiny_cache_path(config) != backbone


def test_pretrained_weights_do_not_depend_on_the_thread_count(tmp_path):
    """A CPU matrix product sums in an order set by the thread count, and over many steps those
    last bits grow into different weights: pre-training runs on one thread whatever the runtime says."""
    from mmcl.models.factory import file_digest
    from mmcl.models.pretraining import pretrain_tiny_clip

    digests = []
    for threads in (2, 1):
        config = load_config("smoke", [f"data.cache_dir={tmp_path / str(threads)}", "model.pretrain.steps=12",
                                       "model.pretrain.samples_per_concept=2", "model.pretrain.batch_size=48"])
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            digests.append(file_digest(pretrain_tiny_clip(config)))
            assert torch.get_num_threads() == threads  # restored after pre-training
        finally:
            torch.set_num_threads(previous)
    assert digests[0] == digests[1]


def test_a_backbone_being_pre_trained_elsewhere_is_waited_for(tmp_path, monkeypatch):
    from mmcl.models import pretraining

    config = load_config("smoke", [f"data.cache_dir={tmp_path}"])
    path = pretraining.tiny_cache_path(config)
    trained = []
    monkeypatch.setattr(pretraining, "_pretrain_tiny_clip", lambda *a: trained.append(1))
    returned = []
    with records.build_lock(path):  # another process is pre-training
        waiter = threading.Thread(target=lambda: returned.append(pretraining.pretrain_tiny_clip(config)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # it waits, and trains nothing
        records.atomic_torch_save({"state_dict": {"weight": torch.zeros(2)}}, path)  # the other process's weights
    waiter.join(timeout=60)
    assert trained == [] and returned == [path]


def test_pretraining_reads_open_clips_own_forward_bit_for_bit():
    """Recipe 2's weights are open_clip's forward of both towers on one thread. A change to the tower
    forward that moves the last bits (the class-token last block did) grows over 600 steps into other
    weights, zero-shot accuracies and results. The weights' bytes also depend on the CPU's instruction
    set (a digest pinned on one machine failed on another), so this compares with open_clip on the
    machine at hand instead of pinning a digest."""
    import open_clip
    import torch.nn.functional as F

    from mmcl.models.backbone import MultiModalEncoder
    from mmcl.models.pretraining import pretraining_features

    torch.manual_seed(0)
    clip = open_clip.create_model("mmcl-micro", pretrained=None, force_image_size=32)
    tokenizer = open_clip.get_tokenizer("mmcl-micro")
    encoder = MultiModalEncoder(clip, tokenizer, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    tokens = tokenizer([f"a photo of a {c} {s}." for c in ("red", "blue", "green") for s in "abcdefgh"])
    image_features, text_features = pretraining_features(encoder, images, tokens)
    with torch.no_grad():
        assert torch.equal(image_features, F.normalize(clip.encode_image(encoder.pixels(images)), dim=-1))
        assert torch.equal(text_features, F.normalize(clip.encode_text(tokens), dim=-1))


def test_caption_vocabulary_trains_bitwise_as_the_whole_table():
    """Pre-training optimises only the token-embedding rows its captions use (CaptionVocabulary): the
    weights written back are bitwise those of AdamW over the whole table, with batches that leave
    some used rows out, and the rows no caption uses keep their initial values."""
    import open_clip

    from mmcl.models.pretraining import CaptionVocabulary

    tokenizer = open_clip.get_tokenizer("mmcl-micro")
    tokens = tokenizer([f"a {c} {s} on the {p}." for c in ("red", "blue", "green") for s in ("disk", "star")
                        for p in ("left", "right")])
    target = torch.randn(len(tokens), 32, generator=torch.Generator().manual_seed(1))
    trained = []
    for subset in (False, True):
        torch.manual_seed(0)
        clip = open_clip.create_model("mmcl-micro", pretrained=None, force_image_size=32)
        initial = clip.token_embedding.weight.detach().clone()
        vocabulary = clip.token_embedding
        if subset:
            clip.token_embedding = CaptionVocabulary(vocabulary, tokens)
        named = list(clip.named_parameters())
        decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=0.01)
        for step in range(6):
            picks = torch.arange(step, step + 5) % len(tokens)
            loss = (clip.encode_text(tokens[picks]) - target[picks]).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if subset:
            clip.token_embedding = clip.token_embedding.write_back(vocabulary)
        trained.append(clip.state_dict())
    assert list(trained[0]) == list(trained[1])
    for name in trained[0]:
        assert torch.equal(trained[0][name], trained[1][name]), name
    table = trained[1]["token_embedding.weight"]
    used = torch.zeros(len(table), dtype=torch.bool)
    used[tokens.unique()] = True
    assert torch.equal(table[~used], initial[~used]) and not torch.equal(table[used], initial[used])


def test_benchmarks_are_generated_on_one_blas_and_one_torch_thread(small_config, monkeypatch):
    """Version 3's modality streams came out with other last bits under OPENBLAS_NUM_THREADS=1 than on
    two threads (a multi-threaded numpy product sums in another order): every chunk is now generated
    with one BLAS and one torch thread, whatever the process has (checked where it happens)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import mmcl.data.benchmarks as benchmarks

    seen = []
    generate = benchmarks._generate_modality

    def watched(*args, **kwargs):
        seen.append((torch.get_num_threads(), {pool["num_threads"] for pool in threadpool_info()}))
        return generate(*args, **kwargs)

    monkeypatch.setattr(benchmarks, "_generate_modality", watched)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(limits=2):
            generate_synthetic(small_config, small_config.benchmarks["modality-stream"])
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(previous)
    assert seen and all(threads == 1 and pools <= {1} for threads, pools in seen)


def test_benchmark_digest_is_the_content(small_config):
    spec = small_config.benchmarks["ego-activities"].model_copy(update={"modalities": ["acc"]})
    config = small_config.model_copy(update={"benchmarks": {**small_config.benchmarks, "ego-activities": spec}})
    first, again = load_benchmark(config, "ego-activities"), load_benchmark(config, "ego-activities")
    assert first.digest() == again.digest() and len(first.digest()) == 64
    again.test.inputs["acc"][0, 0, 0] += 1  # one value of one test sample
    assert again.digest() != first.digest()


def test_difficulty_knobs_change_the_data_and_are_validated(small_config):
    spec = small_config.benchmarks["av-events"].model_copy(update={"modalities": ["audio"]})
    clean = generate_synthetic(small_config, spec)[0]
    hard = load_config("smoke", ["data.train_per_class=3", "data.test_per_class=2", "data.generator.cue_jitter=1"])
    harder = generate_synthetic(hard, spec)[0].inputs["audio"]
    assert not torch.equal(harder, clean.inputs["audio"])
    # A benchmark's own generator section replaces data.generator for that benchmark.
    own = spec.model_copy(update={"generator": hard.data.generator})
    assert torch.equal(generate_synthetic(small_config, own)[0].inputs["audio"], harder)
    with pytest.raises(ConfigError, match="data.generator.occlusion"):
        load_config("smoke", ["data.generator.occlusion=2"])


def _dominant_hz(signals: np.ndarray, sample_rate: int) -> np.ndarray:
    """The strongest frequency of each sample's most varying axis: ``signals`` is ``[n, 3, samples]``."""
    axis = signals.var(axis=2).argmax(axis=1)
    picked = signals[np.arange(len(signals)), axis]
    spectrum = np.abs(np.fft.rfft(picked - picked.mean(axis=1, keepdims=True), axis=1))
    return np.fft.rfftfreq(signals.shape[2], 1 / sample_rate)[spectrum.argmax(axis=1)]


def test_inertial_jitter_spreads_motion_frequencies_as_far_as_the_other_cues():
    # Unset (0) the lever is not in the configuration's dumps: v5's fingerprints and run identities hold.
    base = load_config("smoke")
    assert "inertial_jitter" not in base.model_dump(mode="json")["data"]["generator"]
    assert load_config("smoke", ["data.generator.inertial_jitter=0"]).fingerprint("data") == base.fingerprint("data")
    assert load_config("smoke", ["data.generator.inertial_jitter=1"]).fingerprint("data") != base.fingerprint("data")
    with pytest.raises(ConfigError, match="data.generator.inertial_jitter"):
        load_config("smoke", ["data.generator.inertial_jitter=-1"])

    # Accelerometer: plain 2 Hz, striped 5 Hz (3 Hz apart). cue_jitter alone spreads a frequency by
    # about 5 % at 0.45, far from the neighbour; inertial_jitter 1 is a spread of 0.45 * 3 = 1.35 Hz.
    plain, striped = synthetic.Concept(0, 0, 0), synthetic.Concept(0, 0, 1)

    def peaks(concept, inertial_jitter):
        difficulty = synthetic.Difficulty(cue_jitter=0.45, inertial_jitter=inertial_jitter)
        signals = synthetic.synthesize_inertial(concept, 400, 50, 2.0, "acc", synthetic.DomainStyle(0),
                                                np.random.default_rng(0), difficulty)
        return _dominant_hz(signals, 50)

    assert peaks(plain, 0).max() < 3.5 < peaks(striped, 0).min()  # never confused
    assert peaks(striped, 0).std() < 0.4
    assert 1.0 < peaks(striped, 1).std() < 1.7  # 1.35 Hz, read on a 0.5 Hz grid
    overlap = np.mean(peaks(plain, 1) > 3.5) + np.mean(peaks(striped, 1) < 3.5)
    assert 0.1 < overlap < 0.5  # each side about 13 % beyond the midpoint


def test_domain_shift_scales_how_far_a_domain_records_from_domain_0():
    base = load_config("smoke")
    assert "domain_shift" not in base.model_dump(mode="json")["data"]["generator"]  # v5's value: v5's identities
    assert load_config("smoke", ["data.generator.domain_shift=1"]).fingerprint("data") == base.fingerprint("data")
    assert load_config("smoke", ["data.generator.domain_shift=2"]).fingerprint("data") != base.fingerprint("data")
    with pytest.raises(ConfigError, match="data.generator.domain_shift"):
        load_config("smoke", ["data.generator.domain_shift=-1"])

    # The corner pixels are background: domain 3's (0.12, 0.28, 0.16) against domain 0's grey 0.5,
    # moved a share `shift` of the way, under domain 3's lighting gain 0.75 ** shift (domain 0's is
    # 1), plus zero-mean colour and sensor noise: at 0.5, 0.866 * (0.31, 0.39, 0.33) - 0.5.
    concept = synthetic.continual_concepts()[0]
    grey, far = synthetic.BACKGROUNDS[0], synthetic.BACKGROUNDS[3]

    def corner_difference(shift):
        difficulty = synthetic.Difficulty(domain_shift=shift)
        corners = [synthetic.render_images(concept, 200, 32, synthetic.DomainStyle(d, "speaker"),
                                           np.random.default_rng(d), difficulty)[:, :4, -4:].mean(axis=(0, 1, 2))
                   for d in (0, 3)]
        return corners[1] - corners[0]

    for shift in (0.0, 0.5, 1.0):
        expected = 0.75 ** shift * (grey + shift * (far - grey)) - grey
        assert np.allclose(corner_difference(shift), expected, atol=0.02), shift
    assert np.allclose(corner_difference(0.5), [-0.232, -0.162, -0.214], atol=0.02)
    # The inertial sensors: the noise that grows with the domain (0.1 per domain at 1) and the gain.
    still = synthetic.Concept(0, 0, 0)

    def spread(shift):
        signals = synthetic.synthesize_inertial(still, 200, 50, 2.0, "gyro", synthetic.DomainStyle(3),
                                                np.random.default_rng(0), synthetic.Difficulty(domain_shift=shift))
        return np.diff(signals, axis=2).std()  # sample-to-sample noise dominates the slow motion's steps
    assert spread(0.0) < spread(1.0) < spread(2.0)
