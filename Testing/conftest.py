"""Shared pytest setup: deterministic torch, 2 threads (the CI machine has 2 cores)."""

import torch

torch.manual_seed(0)
torch.set_num_threads(2)
