"""Test environment (offline hubs, one thread per process, 'far' log records that reach caplog) and the helpers
tests share, as fixtures: the shared folder and its parity fixtures, the experiment files under options/, tiny
random FAR models and their samplers, a fresh accelerate state, and the repository's scripts, run as a user runs
them or imported for their functions.

Tests that take more than ~10 s on two cores (training or evaluating through the scripts several times,
several processes, compiling) are marked `slow`: `python3 -m pytest -q -m "not slow" tests` leaves them out (the
fast loop), `python3 -m pytest -q tests` runs everything."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import importlib.util  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402

from far.experiment import ExperimentOptions, load_experiment  # noqa: E402
from far.models import FAR, FAR_Long, NBPTokenizer  # noqa: E402
from far.options import validate_block  # noqa: E402
from far.pipelines import FARPipeline, FARSampling  # noqa: E402
from far.registry import DATASETS  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
OPTIONS = REPO / 'options'


@pytest.fixture(scope='session')
def dataset_of():
    """``dataset_of(type, split, source, **read)``: the dataset of the YAML block ``{type, split, source, read}``,
    validated as in an experiment file."""
    def build(name: str, split: str, source: dict, **read):
        block = {'type': name, 'split': split, 'source': source, **({'read': read} if read else {})}
        return DATASETS.build(validate_block(block, DATASETS, 'test.yml', 'datasets.test'))
    return build


@pytest.fixture(autouse=True)
def far_records_reach_caplog(monkeypatch):
    """A test that set up a run's logging in this process keeps 'far' records from pytest's caplog."""
    monkeypatch.setattr(logging.getLogger('far'), 'propagate', True)


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f'{SHARED} is absent: the shared fixtures and evaluator weights live there')
    return SHARED


@pytest.fixture(scope='session')
def parity(shared_dir):
    """``parity('far.pt')``: a file of the reference implementation's outputs (skips when it is absent)."""

    def load(name: str) -> dict:
        path = shared_dir / 'fixtures' / 'parity' / name
        if not path.is_file():
            pytest.skip(f'{path} is absent')
        return torch.load(path, weights_only=False)

    return load


@pytest.fixture(scope='session')
def nbp_parity(parity) -> dict:
    """The NBP reference's outputs (``nbp.pt``: FSQ, tokenizer, transformer layouts, sampling), loaded once."""
    return parity('nbp.pt')


@pytest.fixture(scope='session')
def experiment_file():
    """``experiment_file('train/far/.../FAR_B_bair_res64_200K_bs32')``: options/<name>.yml validated, read once."""

    @functools.lru_cache(maxsize=None)
    def load(name: str) -> ExperimentOptions:
        return load_experiment(str(OPTIONS / f'{name}.yml'))

    return load


@pytest.fixture
def fresh_accelerator_state():
    """A fresh single-process accelerate state for the test, whatever other tests set up, and none left after."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


# ----- tiny models and samplers -----

def randomized(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """``model`` in eval mode with N(0, std) weights: DiT's zero initialisation would make outputs trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


TINY_FAR = dict(patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
                num_attention_heads=2, axes_dims_rope=[4, 6, 6], condition_cfg=None, condition_dropout=0.0)


@pytest.fixture
def tiny_far():
    """``tiny_far(**overrides)``: a 2-layer FAR on 4-channel latents with random weights (seed 0)."""

    def make(**overrides) -> FAR:
        torch.manual_seed(0)
        return randomized(FAR(**{**TINY_FAR, **overrides}))

    return make


@pytest.fixture
def tiny_far_long():
    """``tiny_far_long(**overrides)``: a 2-layer FAR-Long, window 3 and 2x2 long-term patches, random weights."""
    return make_tiny_far_long


def make_tiny_far_long(**overrides) -> FAR_Long:
    """The ``tiny_far_long`` fixture's model, also for a test's child process."""
    torch.manual_seed(0)
    config = {**TINY_FAR, 'context_patch_size': 2, 'short_term_ctx_winsize': 3,
              'condition_cfg': {'type': 'action', 'num_action_classes': 4}}
    return randomized(FAR_Long(**{**config, **overrides}))


@pytest.fixture
def make_pipeline():
    """``make_pipeline(model, vae=None, **sampling)``: a quiet FARPipeline with the given FARSampling settings."""

    def make(model, vae=None, **sampling) -> FARPipeline:
        pipe = FARPipeline(transformer=model, vae=vae, options=FARSampling(**sampling))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture
def reference_model(parity):
    """``reference_model('far.pt', FAR, **overrides)``: a parity file and its model with the reference's weights,
    loaded strictly (the published parameter names)."""

    def load(name: str, model_class, **overrides):
        fixture = parity(name)
        model = model_class(**{**fixture['config'], **overrides})
        model.load_state_dict(fixture['state_dict'])
        return fixture, model

    return load


@pytest.fixture
def reference_forward_error(reference_model):
    """``reference_forward_error('far.pt', FAR)``: the largest difference of the model's training-mode forward pass
    to the reference's (every frame, long-term ones included)."""

    def error(name: str, model_class) -> float:
        fixture, model = reference_model(name, model_class, condition_dropout=0.0)
        forward = fixture['forward']
        out = model.train()(forward['latents'], timestep=forward['timesteps'], conditions=forward['conditions']).sample
        assert out.shape == forward['output'].shape
        return (out - forward['output']).abs().max().item()

    return error


@pytest.fixture
def reference_generation_error(reference_model, make_pipeline):
    """``reference_generation_error('far.pt', FAR, **sampling)``: the largest difference of our sampled latents to the
    reference's, with and without its KV cache (which agree), from the same context, noise and conditions."""

    def error(name: str, model_class, **sampling) -> float:
        fixture, model = reference_model(name, model_class)
        g = fixture['generate']
        out = make_pipeline(model.eval()).generate_latents(
            context=g['context'], noise=g['noise'], conditions=g['conditions'],
            num_inference_steps=g['num_inference_steps'], guidance_scale=g['guidance_scale'], **sampling)
        assert out.shape == g['output_kv_cache'].shape
        return max((out - g[key]).abs().max().item() for key in ('output_kv_cache', 'output_no_cache'))

    return error


# ----- the repository's scripts -----

class Scripts:
    """train.py, test.py and scripts/ run in a working directory of the test's, as a user runs them."""

    repo = REPO
    demo = REPO / 'options' / 'demo' / 'far_moving_shapes.yml'
    # The demo experiment shrunk to seconds: a 1-layer unconditional model (clips of the tests' own carry no
    # label), 20 steps, a few small clips.
    tiny = [
        'model.num_layers=1', 'model.num_attention_heads=1', 'model.condition_cfg=null',
        'trainer.validation.sampler.guidance_scale=1.0', 'test.sampler.guidance_scale=1.0',
        'trainer.total_steps=20', 'trainer.batch_size=4', 'trainer.lr_schedule.warmup_steps=5',
        'trainer.checkpoint.every=10', 'trainer.checkpoint.keep=2', 'trainer.log.every=5',
        'trainer.validation.every=10', 'trainer.validation.num_videos=2',
        'trainer.validation.sampler.num_inference_steps=2', 'trainer.validation.unroll_length=3',
        'trainer.validation.batch_size=2',
        'datasets.train.source.num_videos=24', 'datasets.val.source.num_videos=4', 'datasets.test.source.num_videos=5',
        'test.protocol.num_videos=5', 'test.protocol.unroll_length=3', 'test.sampler.num_inference_steps=2',
        'test.batch_size=2',
    ]

    # A random NBP tokenizer small enough for seconds of training (see the `tokenizer_file` fixture).
    tiny_tokenizer = dict(image_size=32, channels=(4, 8, 8), num_groups=2, residual_units=(1, 1, 1, 1),
                          fsq_levels=(8, 5, 5, 5))
    tiny_tokenizer_overrides = ['autoencoder.channels=[4, 8, 8]', 'autoencoder.num_groups=2']

    def tiny_nbp(self, tokenizer_file: Path) -> list:
        """The NBP demo shrunk to seconds: a 1-layer model of width 32 on a tiny random tokenizer, 4 steps, 8 clips."""
        return [
            'model.num_layers=1', 'model.num_attention_heads=2', 'model.hidden_size=32',
            f'autoencoder.checkpoint={tokenizer_file}', *self.tiny_tokenizer_overrides,
            'trainer.total_steps=4', 'trainer.batch_size=2', 'trainer.lr_schedule.warmup_steps=1',
            'trainer.checkpoint.every=4', 'trainer.log.every=2', 'trainer.validation.every=4',
            'trainer.validation.num_videos=2', 'trainer.validation.batch_size=2',
            'datasets.train.source.num_videos=8', 'datasets.val.source.num_videos=2',
            'datasets.test.source.num_videos=3', 'test.protocol.num_videos=3', 'test.batch_size=2',
        ]

    @staticmethod
    def run(script: str, *args: str, cwd: Path, launcher=(), timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a script of the repository in ``cwd`` (one thread per process, hubs offline)."""
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'WANDB_MODE': 'offline'}
        Path(cwd).mkdir(parents=True, exist_ok=True)
        command = [*launcher, str(REPO / script)] if launcher else [sys.executable, str(REPO / script)]
        return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    def start_ranks(self, cwd: Path, port: int, *args: str) -> list:
        """The two ranks of a tiny demo run started without a launcher, as on two machines (nobody stops a survivor);
        their output goes to ``cwd/rank<r>.out`` and ``.err``. PYTHONFAULTHANDLER lets ``finished`` make a hung
        rank print where it stands."""
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'WANDB_MODE': 'offline',
               'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'WORLD_SIZE': '2', 'PYTHONFAULTHANDLER': '1'}
        return [subprocess.Popen([sys.executable, str(self.repo / 'train.py'), '-opt', str(self.demo), *self.tiny,
                                  *args], cwd=cwd,
                                 env={**env, 'RANK': str(rank), 'LOCAL_RANK': str(rank)}, text=True,
                                 stdout=open(cwd / f'rank{rank}.out', 'a'), stderr=open(cwd / f'rank{rank}.err', 'w'))
                for rank in range(2)]

    @staticmethod
    def finished(ranks: list, cwd: Path, timeout: float = 150) -> list:
        """The exit codes of ``start_ranks``' ranks; a rank still running after ``timeout`` seconds fails the test
        with every rank's stderr, which holds the hung rank's Python stacks (SIGABRT under PYTHONFAULTHANDLER)."""
        deadline = time.monotonic() + timeout
        try:
            return [rank.wait(timeout=max(deadline - time.monotonic(), 1)) for rank in ranks]
        except subprocess.TimeoutExpired:
            for rank in ranks:
                if rank.poll() is None:
                    rank.send_signal(signal.SIGABRT)
            for rank in ranks:
                rank.wait()
            logs = '\n'.join(f'--- rank{r}.err ---\n' + (cwd / f'rank{r}.err').read_text()[-6000:]
                             for r in range(len(ranks)))
            pytest.fail(f'a rank did not finish within {timeout} s:\n{logs}')

    @staticmethod
    def free_port() -> int:
        """A local port nobody listens on, for a launch of several processes (other runs may hold 29500)."""
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            return s.getsockname()[1]

    @staticmethod
    def module(script: str) -> ModuleType:
        """A script of the repository (``'scripts/download.py'``) imported as a module, to call its functions."""
        path = REPO / script
        spec = importlib.util.spec_from_file_location(f'far_script_{path.stem}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def train(self, cwd: Path, *overrides: str, name: str = 'tiny') -> subprocess.CompletedProcess:
        """The tiny demo run ``name`` in ``cwd``; fails the test when train.py fails."""
        result = self.run('train.py', '-opt', str(self.demo), *self.tiny, f'name={name}', *overrides, cwd=cwd)
        assert result.returncode == 0, result.stdout + result.stderr
        return result


@pytest.fixture(scope='session')
def scripts() -> Scripts:
    return Scripts()


@pytest.fixture(scope='session')
def tokenizer_file(tmp_path_factory, scripts) -> Path:
    """A random tiny NBP tokenizer's state dict (a plain ``.pt``, as a checkpoint key takes it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('tokenizer') / 'tokenizer.pt'
    torch.save(NBPTokenizer(**scripts.tiny_tokenizer).state_dict(), path)
    return path
