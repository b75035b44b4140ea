"""The method contract: cards check themselves, registration checks what needs the Config, one
declaration (``frozen``) gives what the frozen prefix cache reads, and the base module holds only
the contract."""
import functools
import inspect

import pytest
import torch

from mmcl.config import SCENARIOS, ConfigError, TuningConfig, load_config
from mmcl.data.benchmarks import load_benchmark
from mmcl.data.scenarios import build_stream
from mmcl.hparams import scenario_benchmark
from mmcl.methods import REGISTRY, base, method_class
from mmcl.methods.base import Frozen, Method, MethodConfig, RunContext, register
from mmcl.methods.card import FAMILIES, Card
from mmcl.methods.text_anchored import TextAnchoredMethod
from mmcl.models.factory import build_encoder

# frozen_blocks(tower) and frozen_weights(tower), (vision, text), of every built-in method on the smoke
# encoder (2 vision blocks, 1 text block), with its default hyper-parameters in each of its scenarios.
# Computed with the code before the contract declared them as ``frozen`` (``hooked_from`` and the
# ``frozen_blocks``/``frozen_weights`` overrides); the declaration must give exactly these.
FROZEN = {
    ("aper", "class_incremental"): ((0, 1), (True, True)),
    ("aper", "domain_incremental"): ((0, 1), (True, True)),
    ("aper", "modality_incremental"): ((0, 1), (True, True)),
    ("av-cil", "class_incremental"): ((1, 1), (False, True)),
    ("av-cil", "domain_incremental"): ((1, 1), (False, True)),
    ("coda-prompt", "class_incremental"): ((0, 1), (True, True)),
    ("coda-prompt", "domain_incremental"): ((0, 1), (True, True)),
    ("coda-prompt", "modality_incremental"): ((0, 1), (True, True)),
    ("comm", "class_incremental"): ((0, 1), (True, True)),
    ("comm", "domain_incremental"): ((0, 1), (True, True)),
    ("comm", "modality_incremental"): ((0, 1), (True, True)),
    ("derpp", "class_incremental"): ((1, 1), (False, True)),
    ("derpp", "domain_incremental"): ((1, 1), (False, True)),
    ("derpp", "modality_incremental"): ((1, 1), (False, True)),
    ("dualprompt", "class_incremental"): ((0, 1), (True, True)),
    ("dualprompt", "domain_incremental"): ((0, 1), (True, True)),
    ("dualprompt", "modality_incremental"): ((0, 1), (True, True)),
    ("ewc", "class_incremental"): ((1, 1), (False, True)),
    ("ewc", "domain_incremental"): ((1, 1), (False, True)),
    ("ewc", "modality_incremental"): ((1, 1), (False, True)),
    ("finetune", "class_incremental"): ((1, 1), (False, True)),
    ("finetune", "domain_incremental"): ((1, 1), (False, True)),
    ("finetune", "modality_incremental"): ((1, 1), (False, True)),
    ("icarl", "class_incremental"): ((1, 1), (False, True)),
    ("icarl", "domain_incremental"): ((1, 1), (False, True)),
    ("icarl", "modality_incremental"): ((1, 1), (False, True)),
    ("joint", "class_incremental"): ((1, 1), (False, True)),
    ("joint", "domain_incremental"): ((1, 1), (False, True)),
    ("joint", "modality_incremental"): ((1, 1), (False, True)),
    ("l2p", "modality_incremental"): ((0, 1), (True, True)),
    ("lwf", "class_incremental"): ((1, 1), (False, True)),
    ("lwf", "domain_incremental"): ((1, 1), (False, True)),
    ("lwf", "modality_incremental"): ((1, 1), (False, True)),
    ("moe-adapters", "class_incremental"): ((0, 0), (True, True)),
    ("moe-adapters", "domain_incremental"): ((1, 0), (True, True)),  # a text task: one lock-step block
    ("moe-adapters", "modality_incremental"): ((0, 0), (True, True)),
    ("ranpac", "class_incremental"): ((2, 1), (True, True)),
    ("ranpac", "domain_incremental"): ((2, 1), (True, True)),
    ("ranpac", "modality_incremental"): ((2, 1), (True, True)),
    ("replay", "class_incremental"): ((1, 1), (False, True)),
    ("replay", "domain_incremental"): ((1, 1), (False, True)),
    ("replay", "modality_incremental"): ((1, 1), (False, True)),
    ("simplecil", "class_incremental"): ((2, 1), (True, True)),
    ("simplecil", "domain_incremental"): ((2, 1), (True, True)),
    ("simplecil", "modality_incremental"): ((2, 1), (True, True)),
    ("slca", "class_incremental"): ((1, 1), (False, True)),
    ("slca", "domain_incremental"): ((1, 1), (False, True)),
    ("slca", "modality_incremental"): ((1, 1), (False, True)),
    ("zero-shot", "class_incremental"): ((2, 1), (True, True)),
    ("zero-shot", "domain_incremental"): ((2, 1), (True, True)),
    ("zero-shot", "modality_incremental"): ((2, 1), (True, True)),
}
# Hyper-parameters that move the declaration (same provenance; the last four were computed with the
# earlier code too, outside the grids: more trainable blocks than hooks, deeper prompts).
FROZEN_VARIANTS = [
    ("finetune", "class_incremental", {"trainable_blocks": 0}, ((2, 1), (True, True))),
    ("joint", "domain_incremental", {"trainable_blocks": 0}, ((2, 1), (True, True))),
    ("replay", "modality_incremental", {"trainable_blocks": 0}, ((2, 1), (True, True))),
    ("moe-adapters", "class_incremental", {"trainable_blocks": 1}, ((0, 0), (False, True))),
    ("moe-adapters", "domain_incremental", {"trainable_blocks": 2}, ((0, 0), (False, True))),
    ("finetune", "class_incremental", {"trainable_blocks": 2}, ((0, 1), (False, True))),
    ("comm", "modality_incremental", {"prompt_depth": 2}, ((0, 1), (True, True))),
]


@functools.lru_cache(maxsize=None)
def _stream(scenario):
    config = load_config("smoke", ["runtime.prefix_cache=false"])
    benchmark = scenario_benchmark(config, scenario, None)
    encoder = build_encoder(config)
    return config, benchmark, build_stream(scenario, load_benchmark(config, benchmark, encoder.tokenizer), 0)


def _declarations(name, scenario, overrides=None):
    config, benchmark, stream = _stream(scenario)
    context = RunContext(config, scenario, stream.class_names, torch.device("cpu"),
                         [task.training_view() for task in stream.tasks], benchmark=benchmark)
    cls = method_class(name)
    method = cls(build_encoder(config), context, cls.make_config(overrides))  # a fresh encoder: methods unfreeze
    return (tuple(method.frozen_blocks(t) for t in ("vision", "text")),
            tuple(method.frozen_weights(t) for t in ("vision", "text")))


def test_the_table_covers_every_scenario_of_its_methods():
    assert {(name, s) for name, _ in FROZEN for s in method_class(name).compatible_scenarios} == set(FROZEN)


@pytest.mark.parametrize(("name", "scenario"), sorted(FROZEN))
def test_frozen_declaration_gives_the_pinned_blocks_and_weights(name, scenario):
    assert _declarations(name, scenario) == FROZEN[name, scenario]


@pytest.mark.parametrize(("name", "scenario", "overrides", "expected"), FROZEN_VARIANTS)
def test_frozen_declaration_follows_the_hyper_parameters(name, scenario, overrides, expected):
    assert _declarations(name, scenario, overrides) == expected


# ------------------------------------------------------------------------------------------ cards
def test_a_card_checks_itself_when_made():
    budget = TuningConfig().trials
    card = Card(name="x", family="classic", description="d", tuning_grid={"lr_scale": [1, 2, 3], "b": [0, 1]})
    assert card.compatible_scenarios == SCENARIOS and card.inapplicable(["image"]) is None
    with pytest.raises(TypeError, match="family: 'adapter' is not one of"):
        Card(name="x", family="adapter", description="d")
    with pytest.raises(TypeError, match=r"compatible_scenarios names unknown scenarios \['task_free'\]"):
        Card(name="x", family="classic", description="d", compatible_scenarios=("task_free",))
    with pytest.raises(TypeError, match=f"2 points, fewer than the default budget of {budget}"):
        Card(name="x", family="classic", description="d", tuning_grid={"lr_scale": [1, 2]})
    with pytest.raises(TypeError, match="empty value lists"):
        Card(name="x", family="classic", description="d", tuning_grid={"lr_scale": []})
    audio_visual = Card(name="av", family="rehearsal", description="d",
                        required_modalities=(("audio",), ("video", "image")))
    assert audio_visual.inapplicable(["image", "depth"]) == "av needs audio in every sample"


def test_families_are_a_closed_set_every_one_in_use():
    assert {cls.card.family for cls in REGISTRY.values()} == set(FAMILIES)


def test_card_fields_read_as_class_and_instance_attributes_and_are_never_set():
    lwf = method_class("lwf")
    assert lwf.name == "lwf" and lwf.family == "classic" and lwf.ablations is lwf.card.ablations
    assert lwf.tuning_grid == {"lr_scale": [0.3, 1.0, 3.0], "distillation_weight": [0.5, 2.0]}
    with pytest.raises(TypeError, match=r"declares \['name', 'hooked_from'\]: name is now a field of card"):
        type("Old", (TextAnchoredMethod,), {"name": "old", "hooked_from": {"vision": 0}})
    with pytest.raises(TypeError, match="frozen_blocks is now frozen = Frozen"):
        type("Old", (Method,), {"frozen_blocks": lambda self, tower: 0})


def test_registration_checks_what_needs_the_config_and_leaves_no_trace():
    def method(name, **card):
        card = Card(name=name, family="classic", description="d", **card)
        return type(name.title(), (TextAnchoredMethod,), {"card": card})

    with pytest.raises(TypeError, match=r"unknown hyper-parameters \['nope'\]"):
        register(method("unknown-grid", tuning_grid={"nope": [1, 2, 3, 4, 5, 6]}))
    with pytest.raises(TypeError, match=r"tuning_grid point \{'lr_scale': 1, 'trainable_blocks': -1\} is invalid"):
        register(method("bad-point", tuning_grid={"lr_scale": [1, 2, 3], "trainable_blocks": [-1, 1]}))
    with pytest.raises(TypeError, match="ablation 'typo' is invalid"):
        register(method("bad-ablation", tuning_grid={"lr_scale": [1, 2, 3], "trainable_blocks": [0, 1]},
                        ablations={"typo": {"trainable_block": 0}}))
    with pytest.raises(TypeError, match="needs a tuning grid"):
        register(method("untuned"))
    with pytest.raises(TypeError, match="needs a card of its own"):
        register(type("NoCard", (TextAnchoredMethod,), {}))
    with pytest.raises(TypeError, match="already registered"):
        register(method("finetune", tuning_grid={"lr_scale": [1, 2, 3], "trainable_blocks": [0, 1]}))
    assert not {"unknown-grid", "bad-point", "bad-ablation", "untuned"} & set(REGISTRY)


def test_one_name_for_the_label_space_knob():
    knobs = {name for name, cls in REGISTRY.items() if "ce_over" in cls.Config.__dataclass_fields__}
    assert knobs == {"l2p", "dualprompt", "coda-prompt", "comm", "slca", "moe-adapters"}
    for name in knobs:
        cls = method_class(name)
        assert [cls.make_config({"ce_over": v}).ce_over for v in ("current", "seen")] == ["current", "seen"]
        with pytest.raises(ConfigError, match=f"methods.{name}.ce_over"):
            cls.make_config({"ce_over": "task"})
    assert not any("ce_label_space" in cls.Config.__dataclass_fields__ for cls in REGISTRY.values())
    assert method_class("moe-adapters").make_config(None).ce_over == "seen"
    assert method_class("l2p").make_config(None).ce_over == "current"


def test_every_config_extends_method_config_with_one_lr_scale_and_head():
    for name, cls in REGISTRY.items():
        assert issubclass(cls.Config, MethodConfig), name
        values = cls.make_config(None)
        assert values.lr_scale == 1.0 and values.head.train in (True, False), name


def test_the_base_module_holds_only_the_contract():
    public = {name for name, value in vars(base).items() if not name.startswith("_")
              and (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == base.__name__}
    assert public == {"Frozen", "Method", "MethodConfig", "RunContext", "at_most", "config_problems", "register"}
    assert isinstance(method_class("l2p").frozen, Frozen)
    documented = base.__doc__
    hooks = ["begin_task", "trains_on", "optimizer_parameter_groups", "training_loss", "after_optimizer_step",
             "end_task", "predict", "representation", "classify", "run_record", "get_extra_state", "set_extra_state",
             "load_checkpoint_state"]
    declarations = ["card", "Config", "frozen", "trains", "trains_on_all_seen_data", "uses_modality_id"]
    for name in hooks + declarations:
        assert f"``{name}" in documented, name
    overridden = {name for cls in REGISTRY.values() for klass in cls.__mro__ if klass not in (Method, torch.nn.Module)
                  and klass.__module__.startswith("mmcl.methods.") for name in vars(klass)
                  if inspect.isfunction(vars(Method).get(name))}
    assert overridden <= set(hooks) | {"__init__", "__init_subclass__"}, overridden - set(hooks)
