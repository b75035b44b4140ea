"""The sweep and ablation job lists, built by the one job builder (:func:`mmcl.reproduce.method_jobs`),
are exactly those of the two former builders (kept below verbatim as references): same jobs, same
order, same keys in the same order."""
from __future__ import annotations

import json

import pytest

from mmcl.config import list_parameter, load_config
from mmcl.hparams import scenario_benchmark
from mmcl.methods import REGISTRY
from mmcl.reproduce import ablation_jobs, compatible_methods, registered_methods, sweep_jobs

SCENARIOS = ("class_incremental", "domain_incremental", "modality_incremental")


def old_sweep_jobs(config, scenario, methods=None, seeds=(0,), benchmarks=None):
    methods, seeds = list_parameter(methods, "methods"), list_parameter(seeds, "seeds", int)
    benchmarks = list_parameter(benchmarks, "benchmarks")
    if not benchmarks:
        entry = config.scenarios.get(scenario)
        more = [*entry.also_on, *entry.appendix] if entry else []
        benchmarks = [scenario_benchmark(config, scenario, None), *more]
    jobs = []
    for benchmark in benchmarks:
        for method in compatible_methods(scenario, methods):
            cls = REGISTRY[method]
            if benchmark in config.benchmarks and cls.inapplicable(config.benchmarks[benchmark].modalities):
                continue
            comparisons = cls.comparisons.items() if scenario in cls.comparison_scenarios else ()
            for variant, overrides in [(None, None), *comparisons]:
                for seed in seeds:
                    job = {"scenario": scenario, "benchmark": benchmark, "method": method, "seed": int(seed)}
                    jobs.append(job | ({"variant": variant, "hparams": overrides} if variant else {}))
    return jobs


def old_ablation_jobs(config, methods=None, seeds=(0,), scenarios=None):
    methods, seeds = list_parameter(methods, "methods"), list_parameter(seeds, "seeds", int)
    scenarios = list_parameter(scenarios, "scenarios")
    jobs = []
    for method in registered_methods(methods):
        cls = REGISTRY[method]
        if not cls.ablations:
            continue
        chosen = [s for s in cls.compatible_scenarios if scenarios is None or s in scenarios]
        for scenario in chosen[:1] if scenarios is None else chosen:
            also = config.scenarios[scenario].ablations_also_on if scenario in config.scenarios else []
            for benchmark in [scenario_benchmark(config, scenario, None), *also]:
                if benchmark in config.benchmarks and cls.inapplicable(config.benchmarks[benchmark].modalities):
                    continue
                for variant, overrides in [(None, None), *cls.ablations.items()]:
                    for seed in seeds:
                        jobs.append({"scenario": scenario, "benchmark": benchmark, "method": method,
                                     "seed": int(seed), "variant": variant, "hparams": overrides})
    return jobs


def same(new: list[dict], old: list[dict]) -> bool:
    """Equal lists of equal dicts whose keys come in the same order (the jobs as written out)."""
    return json.dumps(new) == json.dumps(old) and new == old


@pytest.mark.parametrize("profile", ["tiny", "smoke"])
def test_job_lists_are_those_of_the_former_builders(profile):
    config = load_config(profile)
    for scenario in SCENARIOS:
        jobs = sweep_jobs(config, scenario, seeds=[0, 1])
        assert jobs and same(jobs, old_sweep_jobs(config, scenario, seeds=[0, 1]))
        assert same(sweep_jobs(config, scenario, methods=["comm", "ewc", "av-cil"], seeds="[2]"),
                    old_sweep_jobs(config, scenario, methods=["comm", "ewc", "av-cil"], seeds="[2]"))
    jobs = ablation_jobs(config, seeds=[0, 1])
    assert jobs and same(jobs, old_ablation_jobs(config, seeds=[0, 1]))
    assert same(ablation_jobs(config, seeds=[0], scenarios=list(SCENARIOS)),
                old_ablation_jobs(config, seeds=[0], scenarios=list(SCENARIOS)))
    assert same(ablation_jobs(config, methods="comm lwf", seeds="0 1"),
                old_ablation_jobs(config, methods="comm lwf", seeds="0 1"))
    # a sweep's full-method job leaves variant and hparams out; an ablation's names them as None
    assert all("variant" not in j or j["variant"] for j in sweep_jobs(config, "class_incremental"))
    assert any(j["variant"] is None and j["hparams"] is None for j in ablation_jobs(config))
