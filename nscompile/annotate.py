"""Annotation: per node, its features and predicted device/cloud cost.

Like Neurosurgeon, nothing here runs the model: every node's latency on the device and on
the server comes from the profiles' per-op regressions evaluated on the node's features
(MACs, bytes in and out, parameter bytes, ...). Unknown op types use a profile's
fallback model, so annotation never fails on an op it has not seen. Where a profile
was calibrated on this very model (``nscompile profile --model``), its measured per-node
times take precedence.
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
    features = _features(model, device)
    device_ms = _node_ms(model, features, device)
    # The server's CPU may block its convolutions' channels differently from the device's.
    cloud_ms = _node_ms(model, features if cloud.nchwc_block == device.nchwc_block else _features(model, cloud), cloud)
    power = np.full(len(features), device.compute_power_w, dtype=np.float64)
    return Annotation(features=features, device_ms=device_ms, cloud_ms=cloud_ms,
                      device_power_w=power, device=device, cloud=cloud)


def _features(model: LoadedModel, profile: Profile) -> list[NodeFeatures]:
    return graph_features(model.model.graph, model.shapes(), model.constants, profile.nchwc_block)


def _node_ms(model: LoadedModel, features: list[NodeFeatures], profile: Profile) -> np.ndarray:
    """Per-node milliseconds on one side: calibrated times where the profile has them, else predicted."""
    measured = calibration(model, profile) or {}
    return np.array([measured[node.name] if node.name in measured else profile.predict_ms(f)
                     for node, f in zip(model.nodes, features)], dtype=np.float64)


def calibration(model: LoadedModel, profile: Profile) -> dict[str, float] | None:
    """The measured per-node times ``profile`` carries for this model and its input shapes, if any."""
    shapes = {name: list(model.tensors[name].shape) for name in model.inputs}
    return profile.calibration_for(model.sha256, shapes)
