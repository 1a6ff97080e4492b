"""Rendering: the differentiable DRR (:mod:`.drr`), the one X-ray simulator of a posed spine
(:mod:`.spine_xray`) with the detector physics of a radiograph (:mod:`.xray_sim`), and overlays of a
DRR on an X-ray (:mod:`.overlay`)."""
