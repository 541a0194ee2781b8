"""An emulated device-network-server testbed and the Neurosurgeon paper's experiments.

The device and the server run as separate processes: in kernel mode the device sits in
its own network namespace behind a tc-shaped veth link and under a cgroup CPU quota;
without root it falls back to user-space shaping (see :mod:`nscompile.testbed.link`).
:func:`nscompile.testbed.experiments.run_bench` runs the experiments ``nscompile bench``
prints and plots.
"""

from nscompile.testbed.link import Rates
from nscompile.testbed.testbed import Session, Testbed

__all__ = ["Rates", "Session", "Testbed"]
