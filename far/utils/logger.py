"""Console/file logging on the main process, progress with ETA, and optional wandb."""
import datetime
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Optional

FORMAT = '%(asctime)s %(levelname)s: %(message)s'


class LogFile(logging.FileHandler):
    """The log file; when it cannot be written (a full disk), one line on the console says so instead of a
    traceback for every message, and the console goes on alone."""

    def handleError(self, record: logging.LogRecord):
        sys.stderr.write(f'warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); '
                         f'logging to the console only\n')
        logging.getLogger('far').removeHandler(self)


def setup_logging(log_file: Optional[Path], is_main_process: bool) -> logging.Logger:
    """The 'far' logger: INFO to the console and ``log_file`` (appended) on the main process; the other
    ranks print warnings only, so every message appears once."""
    logger = logging.getLogger('far')
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if is_main_process else logging.WARNING)
    logger.propagate = False
    handlers = [logging.StreamHandler(sys.stdout)]
    if is_main_process and log_file is not None:
        handlers.append(LogFile(log_file, mode='a'))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT, datefmt='%Y-%m-%d %H:%M:%S'))
        logger.addHandler(handler)
    return logger


class Progress:
    """Rate and ETA of a loop that runs from ``start`` to ``total`` (steps, batches, ...). With ``first_is_one_off``
    the first call's units (e.g. a batch that compiles the sampler's passes) are left out of the rate and ETA."""

    def __init__(self, total: int, start: int = 0, first_is_one_off: bool = False):
        self.total, self.start, self.t0 = total, start, time.perf_counter()
        self.first_is_one_off = first_is_one_off

    def __call__(self, done: int, unit: str = 'it') -> str:
        now = time.perf_counter()
        elapsed = now - self.t0
        if self.first_is_one_off:
            self.first_is_one_off, self.start, self.t0 = False, done, now
            return f'{elapsed:.2f} s for the first {unit} (one-off work such as compilation included), ETA after the next'
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        speed = f'{rate:.2f} {unit}/s' if rate >= 1 or rate == 0 else f'{1 / rate:.2f} s/{unit}'
        return f'{speed}, ETA {datetime.timedelta(seconds=round(eta))}'


def setup_wandb(folder: Path, name: str, project: str, entity: Optional[str], config: dict):
    """A wandb run logging into ``folder``, resumed across restarts of the same experiment.

    ``WANDB_MODE=offline`` keeps everything local (``wandb sync`` uploads it later).
    """
    import wandb

    id_file = folder / 'wandb_run_id'
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id)
    return wandb.init(project=project, entity=entity, name=name, id=run_id, resume='allow', dir=str(folder),
                      config=config)
