"""Suite-wide fixtures."""

import pytest
import torch

# torch's thread count when the suite starts (the machine's default)
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _default_torch_threads():
    """A run built in-process with ``threads=N`` sets torch's thread count for the whole process (module
    fixtures included); every test starts from the default so its numerics do not depend on which tests
    ran before it."""
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(DEFAULT_THREADS)
