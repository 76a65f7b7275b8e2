"""The deconvnet engine, one way down (each module imports only the ones listed before it):

* :mod:`~deconvviz.engine.tracer` -- the one owner of a forward pass's hooks and function mode;
* :mod:`~deconvviz.engine.rules` -- the reverse-path building blocks and the ReLU rules;
* :mod:`~deconvviz.engine.support` -- what each layer type and activation call gets;
* :mod:`~deconvviz.engine.rfops` -- which ops keep, compose or lose a receptive field;
* :mod:`~deconvviz.engine.receptive` -- receptive fields, followed through the forward pass;
* :mod:`~deconvviz.engine.swap` -- the function mode that gives every ReLU call the rule;
* :mod:`~deconvviz.engine.crops` -- receptive-field crops and the shared whole-image path;
* :mod:`~deconvviz.engine.probe` -- the forward passes and the probe of every layer call;
* :mod:`~deconvviz.engine.geometry` -- the layers' names, forward order and geometry per shape;
* :mod:`~deconvviz.engine.seeds` -- the checks of what a projection may be asked for;
* :mod:`~deconvviz.engine.schedule` -- crops, whole images, fallback and the reverse pass;
* :mod:`~deconvviz.engine.deconvnet` -- :func:`attach` and the :class:`Deconvnet` handle;
* :mod:`~deconvviz.engine.summary` -- :func:`~deconvviz.engine.summary.layer_table`.
"""

from deconvviz.base.checks import batch_images, model_device_dtype, split_call
from deconvviz.engine.crops import gather_windows, place_filters, scatter_windows
from deconvviz.engine.deconvnet import (
    Deconvnet,
    attach,
    layer_output,
    receptive_field,
)
from deconvviz.engine.geometry import LayerGeometry
from deconvviz.engine.probe import DeconvvizWarning
from deconvviz.engine.receptive import ReceptiveField
from deconvviz.engine.rules import Rule, get_rule, register_rule, rule_names
from deconvviz.engine.tracer import Tracer, eval_mode, exact_cuda

__all__ = [
    "Deconvnet",
    "DeconvvizWarning",
    "LayerGeometry",
    "ReceptiveField",
    "Rule",
    "Tracer",
    "attach",
    "batch_images",
    "eval_mode",
    "exact_cuda",
    "gather_windows",
    "get_rule",
    "layer_output",
    "model_device_dtype",
    "place_filters",
    "receptive_field",
    "register_rule",
    "rule_names",
    "scatter_windows",
    "split_call",
]
