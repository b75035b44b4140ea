"""The frozen prefix cache: the same numbers as the uncached path, for every method; tables on disk,
rebuilt when damaged; batches it does not hold take the uncached path."""
import threading
import uuid

import pytest
import torch

from mmcl import engine, records, runtime
from mmcl.config import load_config
from mmcl.data.benchmarks import load_benchmark
from mmcl.methods import method_class
from mmcl.methods.base import REGISTRY
from mmcl.methods.snapshot import Snapshot
from mmcl.models import prefix_cache
from mmcl.models.factory import build_encoder

method_class("finetune")  # registers the built-in methods
# One method per kind of declaration runs in the quick suite (fine-tuning: a prefix up to the trainable
# block; prompts: frozen queries; prototypes: frozen final embeddings; MoE adapters: both towers'
# prefixes; APER: hooks after every block); the others with the slow tests (about 2.5 min in all).
QUICK = {"finetune", "l2p", "simplecil", "moe-adapters", "aper"}
METHODS = [pytest.param(m, marks=() if m in QUICK else pytest.mark.slow) for m in sorted(REGISTRY)]


def scenario_of(method: str) -> str:
    scenarios = method_class(method).compatible_scenarios
    return "class_incremental" if "class_incremental" in scenarios else scenarios[0]


@pytest.mark.parametrize("method", METHODS)
def test_cached_path_gives_the_uncached_accuracy_matrix(tmp_path, monkeypatch, method):
    built = []
    build_run = engine.build_run
    monkeypatch.setattr(engine, "build_run", lambda *a, **k: built.append(build_run(*a, **k)) or built[-1])
    matrices = {}
    for flag in ("true", "false"):
        config = load_config("smoke", [f"runtime.output_dir={tmp_path / flag}", f"runtime.prefix_cache={flag}",
                                       "train.epochs=1"])
        matrices[flag] = engine.run(config, scenario_of(method), method, seed=0).accuracy_matrix
        cache = built[-1][0].encoder.prefix_cache
        if flag == "true":  # every method declares something frozen: the cached path was taken
            assert cache is not None and cache.hits > 0, (cache.hits, cache.misses)
        else:
            assert cache is None
    assert matrices["true"].keys() == matrices["false"].keys()
    for mode, matrix in matrices["true"].items():
        for cached_row, plain_row in zip(matrix, matrices["false"][mode], strict=True):
            assert cached_row == pytest.approx(plain_row, abs=0.5)


@pytest.fixture
def encoder_and_data(smoke_config):
    """The smoke encoder and benchmark; ``data.digest()`` names a prefix folder of this test's own
    (these tests damage and delete tables: other xdist workers' runs must not read them)."""
    encoder = build_encoder(smoke_config)
    data = load_benchmark(smoke_config, "av-events", encoder.tokenizer)
    private = uuid.uuid4().hex
    data.digest = lambda: private
    return smoke_config, encoder, data


class Declares:
    """A stand-in method: only its declarations."""

    def __init__(self, encoder, blocks: int, weights: bool):
        self.encoder, self.blocks, self.weights = encoder, blocks, weights

    def frozen_blocks(self, tower):
        return self.blocks

    def frozen_weights(self, tower):
        return self.weights


def test_cached_states_and_embeddings_equal_the_frozen_forward(encoder_and_data, tmp_path):
    config, encoder, data = encoder_and_data
    modality = "video"  # frames: the vision tower's units are images
    images = data.test.inputs[modality][:5]
    with torch.no_grad():
        plain_state = encoder.run_blocks(encoder.tower_input(modality, images), stop=1)
        plain = encoder.encode(modality, images)
    cache = prefix_cache.attach(encoder, data, config, data.digest())
    with torch.no_grad():
        assert encoder.tower_input(modality, images).depth == 0  # nothing declared yet: uncached
        cache.declare(Declares(encoder, 1, True))
        state = encoder.tower_input(modality, images)
        assert state.depth == 1 and state.frames == images.shape[1] and cache.hits == 1
        torch.testing.assert_close(state.tokens, plain_state.tokens, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(encoder.encode(modality, images), plain, rtol=1e-4, atol=1e-5)
        # a batch with one image the cache does not hold takes the uncached path, whole
        odd = images.clone()
        odd[0] = 255 - odd[0]
        assert encoder.tower_input(modality, odd).depth == 0 and cache.misses == 1
    files = {p.name for p in cache.folder.glob("*.pt")}  # beside them, their build locks
    assert files >= {"vision-block1-train+test.pt", "vision-final-train+test.pt"}
    assert cache.folder.parent == config.cache_dir() / "prefix"


def test_a_hook_only_method_gets_the_tokens_entering_block_0_bitwise(encoder_and_data):
    # The prompt methods hook the vision tower from block 0 and train none of its weights: the patch
    # embedding, class token, positions and pre-norm before block 0 are frozen, so they are a table too.
    # Where the tower's weights may train (fine-tuning everything), block 0's input is never cached.
    config, encoder, data = encoder_and_data
    images = data.test.inputs["video"][:3]
    with torch.no_grad():
        plain = encoder.tower_input("video", images).tokens
    cache = prefix_cache.attach(encoder, data, config, data.digest())
    cache.declare(Declares(encoder, 0, False))
    with torch.no_grad():
        assert encoder.tower_input("video", images).depth == 0 and cache.hits == cache.misses == 0
        cache.declare(Declares(encoder, 0, True))
        cached = encoder.tower_input("video", images)
        text = encoder.tower_input("text", data.test.inputs["text"][:2]) if "text" in data.test.inputs else None
    assert cache.hits == 1 and cached.depth == 0 and cached.frames == images.shape[1]
    assert torch.equal(cached.tokens, plain)  # bitwise: the same per-image operations, in other batches
    assert text is None or cache.hits == 1  # text: a token lookup, never a table
    assert cache.path("vision", "0").is_file()


def test_a_batch_is_hashed_once_until_it_changes(encoder_and_data, monkeypatch):
    config, encoder, data = encoder_and_data
    hashed = []
    row_keys = prefix_cache.row_keys
    monkeypatch.setattr(prefix_cache, "row_keys", lambda rows: hashed.append(1) or row_keys(rows))
    cache = prefix_cache.PrefixCache({}, None, "test")
    images = data.test.inputs["video"][:2].flatten(0, 1).clone()
    first = cache.keys(images)
    assert cache.keys(images) is first and hashed == [1]
    assert cache.keys(images.clone()) == first and hashed == [1, 1]  # another tensor: hashed again
    images[0] = 255 - images[0]  # changed in place: its digests are computed again
    assert cache.keys(images) != first and hashed == [1, 1, 1]


def test_a_damaged_table_is_rebuilt(encoder_and_data, caplog):
    config, encoder, data = encoder_and_data
    images = data.test.inputs["audio"][:3]
    cache = prefix_cache.attach(encoder, data, config, data.digest())
    cache.declare(Declares(encoder, 1, False))
    with torch.no_grad():
        first = encoder.tower_input("audio", images).tokens
    path = cache.path("vision", "1")
    path.write_bytes(b"not a tensor file")
    again = prefix_cache.attach(encoder, data, config, data.digest())
    again.declare(Declares(encoder, 1, False))
    with torch.no_grad():
        rebuilt = encoder.tower_input("audio", images)
    assert rebuilt.depth == 1 and "is damaged" in caplog.text
    torch.testing.assert_close(rebuilt.tokens, first)
    assert torch.load(path, weights_only=True)["values"].shape[1:] == first.shape[1:]



def test_a_table_being_built_elsewhere_is_waited_for_and_loaded(encoder_and_data, monkeypatch):
    # two pool workers starting runs on one benchmark: the second waits for the first's table
    config, encoder, data = encoder_and_data
    computed = []
    compute = prefix_cache.PrefixCache._compute
    monkeypatch.setattr(prefix_cache.PrefixCache, "_compute",
                        lambda self, *a: computed.append(a[1:3]) or compute(self, *a))
    first = prefix_cache.attach(encoder, data, config, data.digest())
    first.declare(Declares(encoder, 1, False))
    path = first.path("vision", "1")
    values = first.table(encoder, "vision", "1").values  # built here
    stored = path.read_bytes()
    computed.clear()
    path.unlink()
    second = prefix_cache.attach(encoder, data, config, data.digest())
    second.declare(Declares(encoder, 1, False))
    with records.build_lock(path):  # another process is building the table
        waiter = threading.Thread(target=second.table, args=(encoder, "vision", "1"))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # it waits, and computes nothing
        path.write_bytes(stored)  # the other process's table
    waiter.join(timeout=60)
    assert computed == []  # loaded what the other process wrote
    assert torch.equal(second.tables["vision", "1"].values, values)

def test_a_teacher_snapshot_shares_the_cache(encoder_and_data):
    config, encoder, data = encoder_and_data
    cache = prefix_cache.attach(encoder, data, config, data.digest())
    teacher = Snapshot(encoder)
    assert teacher.module.prefix_cache is cache


def test_declarations_follow_each_methods_frozen_part(smoke_config):
    from mmcl.methods.base import RunContext

    encoder = build_encoder(smoke_config)
    vision, text = len(encoder.vision_blocks), len(encoder.text_blocks)
    context = RunContext(smoke_config, "class_incremental", ["a", "b"], torch.device("cpu"), [])

    def declared(name, **hparams):
        cls = method_class(name)
        method = cls.__new__(cls)
        torch.nn.Module.__init__(method)
        method.encoder, method.context, method.hparams = encoder, context, cls.make_config(hparams)
        return prefix_cache.declarations(method)

    assert declared("finetune", trainable_blocks=1) == ({"vision": vision - 1, "text": text},
                                                        {"vision": False, "text": True})
    assert declared("finetune", trainable_blocks=0) == ({"vision": vision, "text": text},
                                                        {"vision": True, "text": True})
    assert declared("simplecil") == ({"vision": vision, "text": text}, {"vision": True, "text": True})
    assert declared("dualprompt") == ({"vision": 0, "text": text}, {"vision": True, "text": True})
    assert declared("aper") == ({"vision": 0, "text": text}, {"vision": True, "text": True})


def test_evaluation_batch_size_is_a_runtime_key(smoke_config, encoder_and_data):
    from mmcl.config import ConfigError

    config, encoder, data = encoder_and_data
    method = type("M", (), {"encoder": encoder})()
    cpu = torch.device("cpu")
    assert runtime.eval_batch_size(config, method, cpu, data.test) == config.train.eval_batch_size  # auto on CPU
    seven = load_config("smoke", ["runtime.eval_batch_size=7"])
    assert runtime.eval_batch_size(seven, method, cpu, data.test) == 7
    with pytest.raises(ConfigError, match="runtime.eval_batch_size"):
        load_config("smoke", ["runtime.eval_batch_size=0"])


def test_a_table_over_the_size_limit_is_not_cached(encoder_and_data, caplog, tmp_path):
    config, encoder, data = encoder_and_data
    small = config.model_copy(update={"runtime": config.runtime.model_copy(update={"prefix_cache_max_gb": 1e-6}),
                                      "data": config.data.model_copy(update={"cache_dir": str(tmp_path)})})
    cache = prefix_cache.attach(encoder, data, small, data.digest())
    cache.declare(Declares(encoder, 1, False))
    with torch.no_grad():
        state = encoder.tower_input("audio", data.test.inputs["audio"][:3])
    assert state.depth == 0 and cache.misses == 1 and "over runtime.prefix_cache_max_gb" in caplog.text
    assert not cache.path("vision", "1").exists()
