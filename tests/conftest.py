"""Test environment: offline hubs, one thread per process, the `slow` marker, the shared fixtures path, and
'far' log records that reach caplog."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes more than ~30 s on a 2-core CPU')


@pytest.fixture(autouse=True)
def far_records_reach_caplog(monkeypatch):
    """A test that set up a run's logging in this process keeps 'far' records from pytest's caplog."""
    monkeypatch.setattr(logging.getLogger('far'), 'propagate', True)


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f'{SHARED} is absent: the shared fixtures and evaluator weights live there')
    return SHARED
