"""Running a convergence study: every contender trained with the same budget and evaluated the same way.

The runs to prepare first (e.g. a tokenizer a contender reads) are trained; then, for each contender, the FLOPs of
its training step are counted, it is trained with train.py (``training.processes`` processes; a run started
again resumes from its newest checkpoint, as train.py does; one trained before with other options, e.g. another
budget, starts anew, its old folder archived) and every evaluated checkpoint is scored by ``far.run.evaluate``, in
this process. Each point is recorded in ``points.json`` as soon as it is scored, so a study started again after a
kill skips what is done; finally the report (``report.md``, ``convergence.png``).
"""
import logging
import resource
import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional

import far.run
from far.convergence.flops import measure_step
from far.convergence.options import StudyOptions
from far.convergence.record import StudyRecord
from far.convergence.report import write_report
from far.convergence.runs import Evaluation, PreparedRun, evaluations, prepare_study
from far.utils.logger import setup_logging

logger = logging.getLogger('far')


class StudyError(RuntimeError):
    """A run of the study failed."""


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Study:
    """One study in its folder ``root/<name>``.

    Args:
        study: the validated study options; ``file``: where they were read (for errors and logs).
        root: the folder studies live in (``experiments``).
        train_script: train.py, launched for every training.
        evaluate: scores one point: ``far.run.evaluate``'s keywords (``options``, ``file``, ``root``) and results.
        launch: runs a command line and returns its exit status.
    """

    def __init__(self, *, study: StudyOptions, file: str, root: str, train_script: Path,
                 evaluate: Callable[..., Optional[dict]] = far.run.evaluate,
                 launch: Callable[[List[str]], int] = subprocess.call):
        self.study, self.file = study, file
        self.folder = Path(root) / study.name
        self.train_script, self.evaluate, self.launch = train_script, evaluate, launch
        self.runs = prepare_study(study, file, self.folder)  # every run checked before any work
        self.evaluations = evaluations(study)
        self.record = StudyRecord(self.folder / 'points.json')

    def run(self):
        self._log_to_study()
        logger.info(f'{self.file} -> {self.folder}')
        for run in self.runs['prepare']:
            self._train(run)
        for run in self.runs['contenders']:
            self.record.drop_stale_points(run.label, {run.evaluation_key(e) for e in self.evaluations})
            self._measure(run)
            self._train(run)
            for evaluation in self.evaluations:
                for step in evaluation.steps:
                    self._evaluate(run, evaluation, step)
        report, plot = write_report(self.record, self.study, self.runs['contenders'], self.evaluations, self.folder)
        logger.info(f'wrote {self.record.path}, {report} and {plot}')

    def _log_to_study(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        setup_logging(self.folder / 'study.log', True)

    def _measure(self, run: PreparedRun):
        if self.record.contender(run.label, run.training_key) is not None:
            return
        cost = measure_step(run.options, run.file)
        clips = self.study.training.batch_size * self.study.training.processes
        self.record.set_contender(run.label, {
            'key': run.training_key, 'experiment': run.file, 'overrides': run.overrides, 'name': run.options.name,
            'parameters': cost.parameters, 'flops_per_clip': cost.flops_per_clip,
            'flops_per_step': cost.flops_per_clip * clips})
        logger.info(f'{run.label}: {cost.parameters:,} trained parameters, {cost.flops_per_clip:.3e} training FLOPs '
                    f'per clip')

    def _train(self, run: PreparedRun):
        name = run.options.name
        done = self.record.training(name, run.training_key)
        if done is not None and done['done'] and run.final_checkpoint(self.folder).is_dir():
            return
        # trained before with other options (e.g. another budget): a new run, as a planned one would go
        replaced = self.record.begin_training(name, run.training_key)
        command = run.train_command(self.folder, self.study.training.processes, self.train_script, replaced)
        logger.info(f'{run.label}: training: {shlex.join(command)}')
        start, cpu = time.perf_counter(), _children_cpu_seconds()
        status = self.launch(command)
        self.record.add_training_time(name, time.perf_counter() - start, _children_cpu_seconds() - cpu, status == 0)
        if status != 0:
            raise StudyError(f'{self.file}: {run.where}: training {run.label} failed (exit status {status}); its log '
                             f'is in {run.folder(self.folder)}; the command: {shlex.join(command)}')

    def _evaluate(self, run: PreparedRun, evaluation: Evaluation, step: int):
        key = run.evaluation_key(evaluation)
        if self.record.point(run.label, evaluation.name, step, key) is not None:
            return
        options = run.evaluation_options(evaluation, self.folder, step)
        logger.info(f'{run.label}: {evaluation.name} at step {step}: '
                    f'{shlex.join(run.test_command(evaluation, self.folder, step))}')
        start, cpu = time.perf_counter(), time.process_time()
        results = self.evaluate(options=options, file=run.file, root=str(self.folder))
        self._log_to_study()  # the evaluation took the logger over
        flops_per_step = self.record.data['contenders'][run.label]['flops_per_step']
        self.record.add_point({
            'contender': run.label, 'evaluation': evaluation.name, 'step': step, 'key': key,
            'training_flops': step * flops_per_step, 'metrics': _scores(results['metrics']),
            'baselines': {name: _scores(results[name]) for name in results['baselines']},
            'seconds': time.perf_counter() - start, 'cpu_seconds': time.process_time() - cpu})


def _scores(metrics: dict) -> dict:
    """The values of one seed set without their spread over seeds (``*_std``)."""
    return {name: value for name, value in metrics.items() if not name.endswith('_std')}
