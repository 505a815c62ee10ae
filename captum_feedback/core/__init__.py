"""The algorithm: one gating engine (:mod:`.engine`, the gate sites of :mod:`.sites`, the
bit-packed gate store of :mod:`.gate_store`), the selection rules (:mod:`.selection`), the
configuration (:mod:`.config`), and the methods built on them: FSP (:mod:`.pruning`, Sec. 3.4),
FR (:mod:`.recovering`, Sec. 3.5), and hidden-neuron targets (:mod:`.layer`); what a run leaves
is a :class:`~.state.FeedbackState`.

The extension point is :class:`~.engine.GatePolicy`: a method is a policy that decides each
site's gate; see ``docs/gate_rules.md``.
"""
