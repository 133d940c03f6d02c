"""Settings of every test: no network, one thread.

Tiny models run fastest on one thread, above all on a 2-core CPU shared with other jobs
(OpenMP threads spin while waiting), and one thread keeps results reproducible.
"""

from __future__ import annotations

import os

# never touch the network: Hugging Face libraries read these when first imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
