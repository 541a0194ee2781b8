"""The device's onnxruntime sessions: one per prefix (all-device included), made on first use.

Creating a session reads the model and its weights, so each is made once and kept,
with its input and output names: a request only looks them up.

Needs numpy and onnxruntime only.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from nscompile.errors import NscompileError
from nscompile.runtime.plan import Cut


class PrefixSessions:
    """The prefix models of one device directory, as cached onnxruntime sessions.

    Args:
        providers: onnxruntime execution providers (default: CPU).
        session_options: onnxruntime session options.
    """

    def __init__(self, providers: list | None = None, session_options: ort.SessionOptions | None = None):
        self._providers = providers or ["CPUExecutionProvider"]
        self._session_options = session_options
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._io: dict[str, tuple[list[str], list[str]]] = {}  # cut id -> session input, output names

    def get(self, cut: Cut) -> ort.InferenceSession:
        """The session of `cut`'s prefix, created on the first call.

        Raises:
            NscompileError: the prefix file cannot be loaded.
        """
        sess = self._sessions.get(cut.id)
        if sess is None:
            try:
                # Loading from the path lets onnxruntime find the shared weights file.
                sess = ort.InferenceSession(str(cut.prefix), sess_options=self._session_options, providers=self._providers)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise NscompileError(f"cannot load prefix model {cut.prefix} ({exc}); copy the build's device/ again") from None
            self._sessions[cut.id] = sess
        return sess

    def drop(self, cut_id: str) -> None:
        """Forget the session of a prefix (its memory goes once no run holds it); the next use makes it again."""
        self._sessions.pop(cut_id, None)
        self._io.pop(cut_id, None)

    def run(self, cut: Cut, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `cut`'s prefix on the graph inputs it reads from `feeds`; output name -> array."""
        sess = self.get(cut)
        io = self._io.get(cut.id)
        if io is None:
            io = self._io[cut.id] = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
        ins, outs = io
        return dict(zip(outs, sess.run(outs, {n: feeds[n] for n in ins})))
