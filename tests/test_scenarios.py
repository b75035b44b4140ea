"""Scenario splits are exact and determined by the seed."""
import pytest
import torch

from mmcl.config import ConfigError, load_config
from mmcl.data.benchmarks import load_benchmark
from mmcl.data import synthetic
from mmcl.data.scenarios import (build_stream, class_order, grouped_class_order, modality_order,
                                  modality_sequence)


@pytest.fixture(scope="module")
def config():
    return load_config("smoke")  # smoke sizes: 15 train (12 after 3 go to validation) and 6 test per class and domain


@pytest.fixture(scope="module")
def av(config):
    return load_benchmark(config, "av-events")


def test_class_incremental_split_is_an_exact_partition(av):
    stream = build_stream("class_incremental", av, seed=3)
    assert [t.classes for t in stream.tasks] == [[0, 1], [2, 3]]
    for task in stream.tasks:
        assert set(task.train.labels.tolist()) == set(task.classes)
        assert set(task.test.labels.tolist()) == set(task.classes)
        assert set(task.val.labels.tolist()) == set(task.classes)
        assert len(task.train) == 12 * 2 and len(task.val) == 3 * 2 and len(task.test) == 6 * 2
        assert task.modalities == ["video", "audio"] and task.train.modalities == ("video", "audio")


def test_labels_follow_the_seed_class_order(av):
    stream = build_stream("class_incremental", av, seed=3)
    order = grouped_class_order(av.class_groups(), 2, 3)
    assert stream.class_order == order
    assert stream.class_names == [av.class_names[i] for i in order]
    # the first training sample of run label k is a sample of benchmark class order[k]
    task = stream.tasks[0]
    original = av.train.labels[torch.nonzero(av.train.labels == order[task.classes[0]])[0]]
    assert int(original) == order[task.classes[0]]
    assert torch.equal(task.train.inputs["audio"][task.train.labels == 0][0],
                       av.train.inputs["audio"][av.train.labels == order[0]][0])


def test_orders_differ_between_seeds_and_repeat_for_a_seed():
    assert class_order(28, 0) == class_order(28, 0)
    assert len({tuple(class_order(28, s)) for s in range(5)}) == 5
    assert sorted(class_order(28, 4)) == list(range(28))
    modalities = ["image", "video", "audio", "depth"]
    assert sorted(modality_order(modalities, 1)) == sorted(modalities)
    assert len({tuple(modality_order(modalities, s)) for s in range(8)}) > 1


def test_domain_incremental_has_all_classes_one_domain_per_task(config):
    emotion = load_benchmark(config, "multilingual-emotion", tokenizer=lambda texts: torch.zeros(len(texts), 4))
    stream = build_stream("domain_incremental", emotion, seed=0)
    assert [t.domain for t in stream.tasks] == ["en", "de"] == stream.domain_order
    for index, task in enumerate(stream.tasks):
        assert task.classes == [0, 1, 2, 3]
        assert set(task.train.domains.tolist()) == {index} and set(task.test.domains.tolist()) == {index}
        assert len(task.train) == 12 * 4 and set(task.val.domains.tolist()) == {index} and len(task.val) == 3 * 4


def test_modality_incremental_one_modality_per_task(config):
    benchmark = load_benchmark(config, "modality-stream")
    stream = build_stream("modality_incremental", benchmark, seed=5)
    assert stream.modality_order == modality_order(["image", "audio"], 5)
    for task, modality in zip(stream.tasks, stream.modality_order):
        assert task.modalities == [modality] and task.train.modalities == (modality,)
    assert [t.classes for t in stream.tasks] == [[0, 1, 2], [3, 4, 5]]
    record = stream.order_record()
    assert record["modality_order"] == stream.modality_order and len(record["tasks"]) == 2


def test_invalid_streams_are_explained(config, av):
    with pytest.raises(ConfigError, match="two domains"):
        build_stream("domain_incremental", av, seed=0)
    with pytest.raises(ConfigError, match="unknown scenario"):
        build_stream("task_incremental", av, seed=0)
    uneven = load_config("smoke", ["benchmarks.av-events.num_tasks=3"])
    with pytest.raises(ConfigError, match="do not split evenly"):
        build_stream("class_incremental", load_benchmark(uneven, "av-events"), seed=0)


def test_recurring_modality_stream_gives_each_occurrence_new_classes(config):
    stream = build_stream("modality_incremental", load_benchmark(config, "modality-stream-recurring"), seed=0)
    assert stream.modality_order == ["image", "audio", "image"]  # the only order without a repeat in a row
    assert [t.name for t in stream.tasks] == ["image", "audio", "image 2"]
    assert [t.classes for t in stream.tasks] == [[0, 1], [2, 3], [4, 5]]
    for task in stream.tasks:
        assert task.train.modalities == (task.modality,)
        assert set(task.train.labels.tolist()) == set(task.classes) == set(task.test.labels.tolist())


def test_recurring_modality_order_follows_the_seed():
    modalities, counts = ["image", "video", "audio", "depth"], {"image": 2, "audio": 2}
    orders = {tuple(modality_sequence(modalities, counts, s)) for s in range(8)}
    assert len(orders) > 1
    for order in orders:
        assert sorted(order) == sorted(["image", "image", "video", "audio", "audio", "depth"])
        assert all(a != b for a, b in zip(order, order[1:]))
    assert modality_sequence(modalities, counts, 3) == modality_sequence(modalities, counts, 3)
    assert modality_sequence(modalities, {}, 5) == modality_order(modalities, 5)
    with pytest.raises(ConfigError, match="modality_tasks"):
        modality_sequence(["image", "audio"], {"image": 3}, 0)


def test_recurring_stream_task_count_is_checked():
    bad = load_config("smoke", ["benchmarks.modality-stream-recurring.num_tasks=2"])
    with pytest.raises(ConfigError, match="benchmarks.modality-stream-recurring.num_tasks"):
        build_stream("modality_incremental", load_benchmark(bad, "modality-stream-recurring"), seed=0)


@pytest.mark.parametrize("profile", ["tiny", "smoke"])
def test_no_stream_of_seeds_0_to_9_learns_a_twin_after_its_mate(profile):
    """Issue 26: a later task's class never shares every cue but one with an earlier task's class, in
    every stream that splits a benchmark's classes into tasks (class- and modality-incremental)."""
    config = load_config(profile)
    checked = 0
    for name, spec in config.benchmarks.items():
        num_tasks = sum(spec.modality_tasks.get(m, 1) for m in spec.modalities) if spec.modality_tasks else spec.num_tasks
        if num_tasks < 2:
            continue  # domain-incremental: every task has every class
        concepts = synthetic.benchmark_concepts(spec.num_classes, spec.num_tasks)
        groups = synthetic.twin_groups([c.name for c in concepts])
        for seed in range(10):
            order = grouped_class_order(groups, num_tasks, seed)
            size = len(order) // num_tasks
            task_of = {c: position // size for position, c in enumerate(order)}
            assert sorted(order) == list(range(spec.num_classes))
            for a, b in ((a, b) for a in range(len(concepts)) for b in range(a + 1, len(concepts))):
                if synthetic.are_twins(concepts[a], concepts[b]):
                    assert task_of[a] == task_of[b], (profile, name, seed, concepts[a].name, concepts[b].name)
            checked += 1
    assert checked == 10 * 5  # av-events, ego-activities and the three modality streams


def test_up_to_32_classes_only_pair_mates_are_twins():
    concepts = synthetic.benchmark_concepts(32, 4)
    twins = {(a.name, b.name) for a in concepts for b in concepts if synthetic.are_twins(a, b)}
    assert len(twins) == 2 * 16
    assert all((a.shape, a.colour) == (b.shape, b.colour) for a in concepts for b in concepts
               if synthetic.are_twins(a, b))
    # the first 40 (modality streams) reach past the twin-free pairs: twins beyond pair-mates exist there
    assert any((a.shape, a.colour) != (b.shape, b.colour) for a in synthetic.benchmark_concepts(40, 4)
               for b in synthetic.benchmark_concepts(40, 4) if synthetic.are_twins(a, b))


def test_odd_tasks_get_one_class_without_its_mate_each():
    concepts = synthetic.benchmark_concepts(28, 4)  # av-events: 4 tasks of 7
    groups = synthetic.twin_groups([c.name for c in concepts])
    assert sorted(map(len, groups)) == [1] * 4 + [2] * 12
    order = grouped_class_order(groups, 4, seed=0)
    for task in range(4):
        block = set(order[task * 7:(task + 1) * 7])
        assert sum(len(g) == 1 and g[0] in block for g in groups) == 1
    assert len(synthetic.benchmark_concepts(6, 1)) == 6 and synthetic.benchmark_concepts(6, 1) == \
        synthetic.continual_concepts()[:6]


def test_grouped_order_refuses_groups_that_cannot_stay_whole():
    assert sorted(grouped_class_order([[0, 1], [2, 3], [4, 5]], 3, 0)) == list(range(6))
    with pytest.raises(ConfigError, match="cannot keep groups"):
        grouped_class_order([[0, 1, 2], [3, 4, 5], [6, 7]], 2, 0, "benchmarks.x.num_tasks")
    with pytest.raises(ConfigError, match="do not split evenly"):
        grouped_class_order([[0], [1], [2]], 2, 0)
