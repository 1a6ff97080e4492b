"""The methods the evaluation scores: ``spinereg register``'s own (:data:`..methods.METHODS`) and the
gradient-free baseline ``cmaes``.

A method is any callable ``method(case) -> (matrix_ras, time_s, extra)``; ``extra`` may
hold ``"verdict"`` ("pass"/"doubt"), ``"similarity"``, ``"evaluations"`` (DRR renders),
``"network_s"`` and ``"fallback"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..errors import InputError
from ..learned.inference import PosePredictor, register_vertebra_learned
from ..learned.models import shipped_model
from ..rigid import RigidConfig, register_vertebra
from .cases import EvalCase

#: A method: case -> (matrix_ras (4, 4), time_s, extra dict).
Method = Callable[[EvalCase], tuple[np.ndarray, float, dict]]


def intensity_method(device: str | torch.device = "cpu", config=None) -> Method:
    """Our registration (:func:`.registration.register_vertebra`, default :class:`RigidConfig`)."""

    config = config if config is not None else RigidConfig()

    def run(case: EvalCase) -> tuple[np.ndarray, float, dict]:
        started = time.perf_counter()
        result = register_vertebra(case.vertebra, case.mu, case.mask, case.images, case.geometries,
                                   init=case.matrix_init, config=config, device=device,
                                   neighbour_offsets=case.neighbour_offsets)
        return result.matrix_ras, time.perf_counter() - started, result_extra(result)

    return run


def result_extra(result) -> dict:
    """What an evaluation record keeps of a :class:`..io.results.VertebraResult`: its verdict and what it read."""
    return {"verdict": result.verdict, "similarity": float(result.similarity), "evaluations": int(result.evaluations),
            "verdict_reason": result.verdict_reason, "rival_margin": result.rival_margin,
            "view_similarities": result.view_similarities, "optimiser_similarity": result.optimiser_similarity,
            "level_margin": result.level_margin, "vertebra_evidence": result.vertebra_evidence}


def cmaes_method(device: str | torch.device = "cpu") -> Method:
    """The gradient-free baseline: CMA-ES alone at every pyramid level, same similarity and ROI."""

    return intensity_method(device, RigidConfig(global_search="cmaes", cmaes_all_levels=True))


def learned_method(device: str | torch.device = "cpu", refine: bool = False, model=None) -> Method:
    """The pose network (the shipped model unless ``model`` is given): alone, or refined (``auto``)."""

    model = model if model is not None else shipped_model()
    if model is None:
        raise InputError("no pose-network model is shipped (Resources/Models/*.pt): train one with 'spinereg train'")
    predictor = PosePredictor(model, device)

    def run(case: EvalCase) -> tuple[np.ndarray, float, dict]:
        started = time.perf_counter()
        result = register_vertebra_learned(case.vertebra, case.mu, case.mask, case.images, case.geometries, predictor,
                                           init=case.matrix_init, refine=refine, device=device,
                                           neighbour_offsets=case.neighbour_offsets)
        extra = {**result_extra(result),
                 "network_s": result.stages[0]["time_s"],
                 "fallback": any(stage["stage"].startswith("fallback") for stage in result.stages)}
        return result.matrix_ras, time.perf_counter() - started, extra

    return run


def auto_method(device: str | torch.device = "cpu", model=None) -> Method:
    """The default of ``spinereg register``: the network's rotation, then the intensity grid and refinement
    (full search when in doubt)."""
    return learned_method(device, refine=True, model=model)


#: Built-in methods by name (:data:`..methods.EVALUATION_METHODS`): name -> factory(device, ...) -> Method.
FACTORIES: dict[str, Callable[..., Method]] = {"auto": auto_method, "learned": learned_method,
                                               "intensity": intensity_method, "cmaes": cmaes_method}


def make_method(name: str, device: str | torch.device = "cpu", **options) -> Method:
    """A built-in method by name (``options`` go to its factory, e.g. ``model`` for learned/auto);
    InputError listing the known ones otherwise."""
    if name not in FACTORIES:
        raise InputError(f"unknown method {name!r}; expected one of {', '.join(FACTORIES)}")
    return FACTORIES[name](device=device, **options)
