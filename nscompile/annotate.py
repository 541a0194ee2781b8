"""Annotation: per node, its features and predicted device/cloud cost.

Like Neurosurgeon, nothing here runs the model: every node's latency on the device and on
the server comes from the profiles' per-op regressions evaluated on the node's features
(MACs, bytes in and out, parameter bytes, ...). Unknown op types use a profile's
fallback model, so annotation never fails on an op it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nscompile.cost_model import Profile
from nscompile.features import NodeFeatures, graph_features
from nscompile.frontend import LoadedModel


@dataclass(frozen=True)
class Annotation:
    """Predicted costs, one entry per node (in the model's topological order)."""

    features: list[NodeFeatures]
    device_ms: np.ndarray
    cloud_ms: np.ndarray
    device_power_w: np.ndarray
    device: Profile
    cloud: Profile


def annotate(model: LoadedModel, device: Profile, cloud: Profile) -> Annotation:
    """Predict every node's device and cloud latency and the device's power while it runs.

    Args:
        model: the loaded, statically shaped model.
        device: the profile of the device that runs prefixes.
        cloud: the profile of the server that runs suffixes (at load factor 1).

    Returns:
        The per-node predictions.
    """
    features = graph_features(model.model.graph, model.shapes(), model.constants)
    device_ms = np.array([device.predict_ms(f) for f in features], dtype=np.float64)
    cloud_ms = np.array([cloud.predict_ms(f) for f in features], dtype=np.float64)
    power = np.full(len(features), device.compute_power_w, dtype=np.float64)
    return Annotation(features=features, device_ms=device_ms, cloud_ms=cloud_ms,
                      device_power_w=power, device=device, cloud=cloud)
