"""Deformable registration: dense fields from the per-vertebra poses, and CT-to-CT registration.

- ``field``      the displacement field (world -> CT), its Jacobian, warping through it
- ``polyrigid``  the spine-wide field from per-vertebra rigid poses (log-Euclidean blending)
"""
