"""Synthetic data with exact truth: the procedural spine phantom (:mod:`.phantom`), the acquisition
distributions shared by evaluation and training (:mod:`.acquisition`), simulated biplanar cases
(:mod:`.biplanar`) and the sample data of the demo (:mod:`.sample_data`)."""
