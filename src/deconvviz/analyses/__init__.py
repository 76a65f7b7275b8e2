"""The analyses layer: everything computed from a model, each returned as a frozen result object.

Its modules: top-k and dataset scans (``topk``, ``scan``), reconstructions (``reconstruct``),
occlusion, statistics, filters, the method comparison (``compare``), and the paper's analyses
beyond single projections with the sanity checks of the projections, which this package
gathers:

* :class:`FeatureEvolution` -- a training callback following the strongest activation of chosen
  feature maps over a fixed image pool (Zeiler & Fergus, Fig. 4).
* :func:`invariance` -- feature distances under translation, scaling and rotation (Fig. 5).
* :func:`correspondence` -- consistency of feature changes when the same object part is
  occluded in several images, against random occlusions (Sec. 5.2, Table 1).
* :func:`randomisation_test` -- Adebayo et al. 2018's cascading model randomisation.
* :func:`sensitivity_check` -- Mahendran & Vedaldi 2016: do projections of different units
  differ?
* ``deconvviz.export.analyses.report_figures`` (export layer) -- quick versions of all of them,
  written as PNG + JSON for the HTML report.

Every analysis returns a small frozen result object of tensors with a ``to_dict()`` for JSON;
:mod:`deconvviz.render.analyses` turns results into figures. See ``docs/analyses.md``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from deconvviz.analyses._common import pick_images
from deconvviz.analyses.correspondence import CorrespondenceResult, correspondence, occlude
from deconvviz.analyses.evolution import EvolutionRecord, EvolutionResult, FeatureEvolution
from deconvviz.analyses.invariance import (
    TRANSFORMS,
    InvarianceResult,
    invariance,
    transform_images,
)
from deconvviz.analyses.metrics import rankdata, sign_disagreement, spearman, ssim
from deconvviz.analyses.sanity import (
    SanityResult,
    SensitivityResult,
    randomisation_test,
    sensitivity_check,
)

__all__ = [
    "TRANSFORMS",
    "CorrespondenceResult",
    "EvolutionRecord",
    "EvolutionResult",
    "FeatureEvolution",
    "InvarianceResult",
    "SanityResult",
    "SensitivityResult",
    "correspondence",
    "invariance",
    "occlude",
    "pick_images",
    "randomisation_test",
    "rankdata",
    "sensitivity_check",
    "sign_disagreement",
    "spearman",
    "ssim",
    "transform_images",
]


def __getattr__(name: str) -> Any:
    # report_figures renders and writes files, so it moved to the export layer
    # (deconvviz.export.analyses); the old name keeps working for a while, with a warning.
    if name == "report_figures":
        warnings.warn(
            "deconvviz.analyses.report_figures moved to deconvviz.export.analyses.report_figures "
            "(it writes files, so it belongs with the writers); import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("deconvviz.export.analyses").report_figures
    raise AttributeError(f"module 'deconvviz.analyses' has no attribute {name!r}")
