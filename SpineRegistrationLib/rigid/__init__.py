"""Per-vertebra rigid 2D/3D registration by DRR similarity: configuration (:mod:`.config`), what is
compared (:mod:`.problem`), global search (:mod:`.search`), local refinement (:mod:`.refine`),
the verdict (:mod:`.verdict`) and the whole registration of one vertebra (:mod:`.register`)."""

from ..io.results import VertebraResult
from .config import GLOBAL_SEARCHES, Progress, RigidConfig
from .register import register_vertebra
