"""Device energy of one measured request, from the device profile's power model.

Energy(S) as DESIGN.md defines it, with the *measured* phase times of the request:
compute at the profile's compute power, the radio at Huang et al.'s
``alpha * Mbps + beta`` while sending and receiving (the transfer times of the emulated
link's rates), and idle power for the rest of the wait (RTT, server time, queueing,
probes). Milliseconds times watts is millijoules.
"""

from __future__ import annotations

from nscompile.cost_model import Profile
from nscompile.planner import NETWORK_PRESETS

#: nscompile's network presets -> the radio model names of a profile (the planner's, so both agree).
RADIO_OF_PRESET = {name: preset["radio"] for name, preset in NETWORK_PRESETS.items()}


def request_energy_mj(rec: dict, profile: Profile, up_mbps: float, down_mbps: float, radio: str) -> float:
    """Estimated device energy (mJ) of one request.

    Args:
        rec: a :class:`nscompile.runtime.RunRecord` as a dict.
        profile: the device profile (power and radio models).
        up_mbps, down_mbps: the link's goodput while the request ran.
        radio: the radio model's name ("3g", "lte", "wifi").

    Returns:
        Millijoules.
    """
    compute_ms = rec.get("prefix_ms", 0.0) + rec.get("fallback_ms", 0.0)
    total = rec["total_ms"]
    model = profile.radio(radio)
    tx_ms = rec.get("upload_bytes", 0) * 8e-3 / up_mbps if up_mbps else 0.0
    rx_ms = rec.get("download_bytes", 0) * 8e-3 / down_mbps if down_mbps and rec.get("upload_bytes", 0) else 0.0
    wait_ms = max(total - compute_ms - tx_ms - rx_ms, 0.0)
    return (compute_ms * profile.compute_power_w + tx_ms * model.up_power_w(up_mbps or 0.0)
            + rx_ms * model.down_power_w(down_mbps or 0.0) + wait_ms * profile.idle_power_w)
