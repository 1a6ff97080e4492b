"""Learned rigid registration: a dual-view network predicts each vertebra's pose from AP and LAT.

Modules: :mod:`.patches` (what the network sees, and the frame of its answer), :mod:`.data`
(training samples synthesised on the fly), :mod:`.network` (the model), :mod:`.checkpoint`
(model files), :mod:`.training` (``spinereg train``) and :mod:`.inference` (the ``learned``
and ``auto`` methods of ``spinereg register``).
"""
