"""A run's hyper-parameters and benchmark: what a method's values resolve to, and its named variants.

A method's values are its defaults < the tuned values of the profile (:func:`mmcl.tuned.tuned_values`,
per scenario) < the profile's and ``--set`` overrides (:func:`resolved_method_values`). A *variant* of a
method is a named set of overrides: an ablation (``Method.ablations``) or a fair comparison
(``Method.comparisons``), see :func:`variant_overrides`.
"""
from __future__ import annotations

from mmcl.config import Config, ConfigError
from mmcl.methods import method_class
from mmcl.tuned import tuned_values


def scenario_benchmark(config: Config, scenario: str, benchmark: str | None) -> str:
    if benchmark:
        return benchmark
    if scenario not in config.scenarios:
        raise ConfigError(f"unknown scenario {scenario!r}; profile {config.profile!r} has {sorted(config.scenarios)}")
    return config.scenarios[scenario].benchmark


def variant_overrides(method: str, variant: str) -> dict:
    """The hyper-parameter overrides of a named variant of ``method``: an ablation
    (``Method.ablations``) or a fair comparison (``Method.comparisons``)."""
    cls = method_class(method)
    ablations = {**cls.ablations, **cls.comparisons}
    if variant not in ablations:
        known = ", ".join(sorted(ablations)) or "none"
        raise ConfigError(f"method {method!r} has no variant {variant!r} (its variants: {known})")
    return dict(ablations[variant])


def merge_nested(base: dict, overrides: dict) -> dict:
    """``base`` updated with ``overrides``, mappings merged key by key (``head: {freeze_old_rows: true}``
    keeps the other ``head`` keys)."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge_nested(merged[key], value) \
            if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def with_method_overrides(config: Config, method: str, hparams: dict | None) -> Config:
    """``config`` with ``hparams`` merged into ``methods.<method>`` (a copy; ``config`` is unchanged)."""
    method_hparams = {**config.methods, method: merge_nested(config.methods.get(method, {}), hparams or {})}
    return config.model_copy(update={"methods": method_hparams}, deep=True)


def resolved_method_values(config: Config, scenario: str, method: str) -> dict:
    """A method's hyper-parameter values: its defaults < the tuned values of the profile
    (:func:`mmcl.tuned.tuned_values`, per scenario) < the profile's and ``--set`` overrides."""
    return {**tuned_values(config.profile, scenario, method), **config.methods.get(method, {})}
