"""The docstring examples of the pure modules run and print what they show (the math, the objective's helpers,
the configs, selection rules and the report helpers): an example that drifts from the code fails here."""

import doctest
import importlib

import pytest

MODULES = [
    "diffusers_edge.losses",
    "diffusers_edge.metrics.retrieval",
    "diffusers_edge.clip_features",
    "diffusers_edge.serialization",
    "diffusers_edge.flags",
    "diffusers_edge.lazy_imports",
    "diffusers_edge.data.format",
    "diffusers_edge.data.streamed_sources",
    "diffusers_edge.selection.algorithms",
    "diffusers_edge.selection.store",
    "diffusers_edge.caption_pool",
    "diffusers_edge.training.objective",
    "diffusers_edge.training.config",
    "diffusers_edge.training.data",
    "diffusers_edge.training.streaming",
    "diffusers_edge.evaluation.protocol",
    "diffusers_edge.evaluation.report",
    "diffusers_edge.shapes.objects",
    "diffusers_edge.shapes.scenes",
    "diffusers_edge.shapes.demo.config",
    "diffusers_edge.shapes.demo.diagnostics",
    "diffusers_edge.shapes.demo.report",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} fail (see the output above)"
