"""Convergence studies: the study file is checked like an experiment file, contenders share the budget and the
evaluation, every point is recorded once and a study started again redoes nothing that is done."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import far  # noqa: F401  (fills the registries)
from far.convergence import Study, load_study
from far.options import OptionError

REPO = Path(__file__).resolve().parents[1]
CPU_STUDY = REPO / 'options' / 'convergence' / 'moving_shapes_cpu.yml'
NBP = REPO / 'options' / 'convergence' / 'nbp'
TINY = ['model.num_layers=1', 'model.num_attention_heads=1', 'trainer.lr_schedule.warmup_steps=1',
        'trainer.log.every=1', 'datasets.train.source.num_videos=8']


class Killed(Exception):
    """Stands for a kill in the middle of a study."""


def tiny_study(tmp_path: Path, **changes) -> Path:
    """The CPU study shrunk to seconds (tiny models, 4 steps, 4 clips), its data under ``tmp_path``."""
    study = yaml.safe_load(CPU_STUDY.read_text())
    study.pop('prepare')
    study['contenders'] = study['contenders'][:2]  # FAR and the Video DiT
    for contender in study['contenders']:
        contender['experiment'] = str(REPO / contender['experiment'])
        contender['overrides'] = [*TINY, f'datasets.train.source.root={tmp_path}/data9']
    study['training'].update(total_steps=4, batch_size=2, processes=1, evaluate_every=2)
    evaluation = study['evaluation']
    evaluation['batch_size'] = 2
    for scored in [evaluation, *evaluation['rollouts']]:
        source = scored['dataset']['source']
        source.update(num_videos=4, root=f"{tmp_path}/data{source['num_frames']}")
        scored['protocol'].update(num_videos=4)
    evaluation['rollouts'] = evaluation['rollouts'][:1]
    study.update(name='tiny_study', **changes)
    path = tmp_path / 'study.yml'
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def study_error(path: Path, overrides=()) -> str:
    with pytest.raises(OptionError) as info:
        Study(study=load_study(str(path), overrides), file=str(path), root='unused', train_script=Path('train.py'))
    return str(info.value)


@pytest.mark.parametrize('name', ['moving_shapes_cpu', 'moving_shapes_gpu'])
def test_the_study_files_and_their_contenders_validate(name):
    path = REPO / 'options' / 'convergence' / f'{name}.yml'
    study = Study(study=load_study(str(path)), file=str(path), root='unused', train_script=Path('train.py'))
    nbp = ['token AR (NBP k=1)', 'NBP k=4'] if name == 'moving_shapes_cpu' else []
    assert [run.label for run in study.runs['contenders']] == ['FAR', 'Video DiT', *nbp]
    far_run, dit = (run.options for run in study.runs['contenders'][:2])
    assert {k: v for k, v in far_run.model.items() if k != 'type'} == {k: v for k, v in dit.model.items() if k != 'type'}


def test_the_nbp_contenders_read_the_tokenizer_the_cpu_study_prepares():
    study = Study(study=load_study(str(CPU_STUDY)), file=str(CPU_STUDY), root='experiments',
                  train_script=Path('train.py'))
    tokenizer, = study.runs['prepare']
    assert tokenizer.options.name == 'nbp_tokenizer_moving_shapes_16px'
    final = f"checkpoint-{tokenizer.options.trainer['total_steps']}"
    prepared = f'experiments/{study.study.name}/{tokenizer.options.name}/checkpoints/{final}'
    nbp = [run for run in study.runs['contenders'] if run.options.model['type'] == 'NBPTransformer']
    assert [run.options.model['token_number_per_step'] for run in nbp] == [1, 4]
    assert all(run.options.autoencoder['checkpoint'] == prepared for run in nbp)
    assert all(run.requires == (tokenizer.training_key,) for run in nbp)


def test_errors_name_the_file_and_the_key(tmp_path):
    path = tiny_study(tmp_path)
    assert "study.yml: training.total_step: unknown key for TrainingBudget (did you mean 'total_steps'?)" in \
        study_error(path, ['training.total_step=3'])
    error = study_error(tiny_study(tmp_path, contenders=[
        {'label': 'FAR', 'experiment': str(REPO / 'options/convergence/contenders/far_moving_shapes_16px.yml'),
         'overrides': ['model.num_layer=1']}]))
    assert 'study.yml: contenders[0]: ' in error and 'far_moving_shapes_16px.yml: model.num_layer: unknown key' in error
    with pytest.raises(OptionError, match=r'study.yml: contenders: must list .* unique labels'):
        load_study(str(tiny_study(tmp_path, contenders=[{'label': 'A', 'experiment': 'x.yml'}] * 2)))
    # an evaluation the contender cannot do is named with the contender and the evaluation
    error = study_error(tiny_study(tmp_path), ['evaluation.protocol.unroll_length=5'])
    assert 'contenders[0] with evaluation convergence' in error and 'needs clips of 10 frames' in error


class FakeRuns:
    """train.py and far.run.evaluate stand-ins: a launch publishes the checkpoints, an evaluation returns scores
    (and may be killed)."""

    def __init__(self, kill_after=None):
        self.launches, self.tests, self.kill_after = [], [], kill_after
        self.study = None

    def launch(self, command):
        self.launches.append(command)
        for run in self.study.runs['contenders']:
            if run.file == command[command.index('-opt') + 1]:
                for step in self.study.study.training.steps():
                    run.checkpoint(self.study.folder, step).mkdir(parents=True, exist_ok=True)
        return 0

    def evaluate(self, *, options, file, root):
        if self.kill_after is not None and len(self.tests) == self.kill_after:
            raise Killed
        assert options.test.dataset == 'convergence_eval' and root == str(self.study.folder)
        self.tests.append((Path(file).name, options.test.checkpoint.rsplit('-', 1)[1]))
        psnr = 10.0 + len(self.tests)
        return {'metrics': {'psnr': psnr, 'psnr_std': 0.0, 'ssim': 0.5,
                            'buckets': [{'frames': [5, 8], 'psnr': psnr, 'psnr_std': 0.0}]},
                'baselines': ['copy_last_frame'], 'copy_last_frame': {'psnr': 9.0, 'ssim': 0.4}}


def run_study(path: Path, root: Path, fake: FakeRuns, overrides=()) -> Study:
    study = Study(study=load_study(str(path), overrides), file=str(path), root=str(root),
                  train_script=Path('train.py'), evaluate=fake.evaluate, launch=fake.launch)
    fake.study = study
    study.run()
    return study


def test_a_killed_study_resumes_without_redoing_finished_points(tmp_path):
    path, root = tiny_study(tmp_path), tmp_path / 'experiments'
    killed = FakeRuns(kill_after=2)
    with pytest.raises(Killed):
        run_study(path, root, killed)
    assert killed.tests == [('far_moving_shapes_16px.yml', '2'), ('far_moving_shapes_16px.yml', '4')]

    resumed = FakeRuns()
    run_study(path, root, resumed)
    # neither FAR's finished training nor its two finished points again: its 2x rollout, then the Video DiT
    assert [Path(c[c.index('-opt') + 1]).name for c in resumed.launches] == ['video_dit_moving_shapes_16px.yml']
    assert resumed.tests == [('far_moving_shapes_16px.yml', '4'), *(('video_dit_moving_shapes_16px.yml', step)
                                                                     for step in ('2', '4', '4'))]
    record = json.loads((root / 'tiny_study' / 'points.json').read_text())
    assert sorted((p['contender'], p['evaluation'], p['step']) for p in record['points']) == sorted(
        (label, evaluation, step) for label in ('FAR', 'Video DiT')
        for evaluation, step in (('convergence', 2), ('convergence', 4), ('2x', 4)))

    again = FakeRuns()
    run_study(path, root, again)
    assert again.launches == [] and again.tests == []
    changed = FakeRuns()  # other evaluation settings: those points again, the trainings kept
    run_study(path, root, changed, ['evaluation.protocol.num_videos=3'])
    assert changed.launches == [] and len(changed.tests) == 4
    longer = FakeRuns()  # another budget: new trainings (train.py archives the old ones), every point again
    run_study(path, root, longer, ['training.total_steps=6'])
    assert [command[-2:] for command in longer.launches] == [['trainer.validation=null', '--force-new']] * 2
    assert len(longer.tests) == 8
    record = json.loads((root / 'tiny_study' / 'points.json').read_text())  # the 4-step run's points are gone
    assert sorted(p['step'] for p in record['points'] if p['contender'] == 'FAR') == [2, 4, 6, 6]


def test_sampling_variants_share_one_training(tmp_path):
    dit = str(REPO / 'options/convergence/contenders/video_dit_moving_shapes_16px.yml')
    variants = [{'label': 'Video DiT', 'experiment': dit},
                {'label': 'Video DiT, whole video at once', 'experiment': dit, 'overrides': ['test.sampler.window=null']}]
    path = tiny_study(tmp_path, contenders=variants)
    fake = FakeRuns()
    run_study(path, tmp_path / 'experiments', fake)
    assert len(fake.launches) == 1 and len(fake.tests) == 6  # trained once, scored twice
    variants[1]['overrides'] = ['trainer.optimizer.lr=0.01']
    error = study_error(tiny_study(tmp_path, contenders=variants))
    assert "contenders[1]: trains experiment 'video_dit_moving_shapes_16px' as contenders[0] does" in error


def test_a_contender_reading_a_prepared_run_depends_on_it(tmp_path):
    far_file, dit_file = (str(REPO / f'options/convergence/contenders/{name}_moving_shapes_16px.yml')
                          for name in ('far', 'video_dit'))
    warm = {'experiment': far_file, 'overrides': [*TINY, 'name=warm_start', 'trainer.total_steps=3']}
    path = tiny_study(tmp_path, prepare=[warm], contenders=[
        {'label': 'Video DiT from FAR', 'experiment': dit_file, 'reads': {'pretrained': 'warm_start'}},
        {'label': 'FAR', 'experiment': far_file}])
    runs = Study(study=load_study(str(path)), file=str(path), root='runs', train_script=Path('train.py')).runs
    assert runs['contenders'][0].requires == (runs['prepare'][0].training_key,)
    assert runs['contenders'][0].options.pretrained == 'runs/tiny_study/warm_start/checkpoints/checkpoint-3'
    assert runs['contenders'][1].requires == ()
    unknown = tiny_study(tmp_path, prepare=[warm], contenders=[
        {'label': 'FAR', 'experiment': far_file, 'reads': {'pretrained': 'warm'}}])
    assert "study.yml: contenders[0].reads.pretrained: names 'warm', which is not an experiment prepared before it " \
           "(prepared: warm_start)" in study_error(unknown)


def test_contenders_share_the_budget_and_the_record_has_their_cost(tmp_path):
    path, root = tiny_study(tmp_path), tmp_path / 'experiments'
    fake = FakeRuns()
    study = run_study(path, root, fake)
    for command in fake.launches:
        assert command[-5:] == ['trainer.total_steps=4', 'trainer.batch_size=2', 'trainer.checkpoint.every=2',
                                'trainer.checkpoint.keep=null', 'trainer.validation=null']
    record = json.loads((root / 'tiny_study' / 'points.json').read_text())
    far_run, dit = record['contenders']['FAR'], record['contenders']['Video DiT']
    assert far_run['parameters'] == dit['parameters'] > 0
    assert far_run['flops_per_step'] == dit['flops_per_step'] == 2 * far_run['flops_per_clip'] > 0
    for point in record['points']:
        assert point['training_flops'] == point['step'] * far_run['flops_per_step']
    report = (study.folder / 'report.md').read_text()
    assert '| FAR | ' in report and '| Video DiT | ' in report and 'copying the last context frame' in report
    assert 'Length generalisation' in report and (study.folder / 'convergence.png').stat().st_size > 10_000
    assert '| contender | evaluation | frames 5-8 |' in report  # the buckets' frames, read from the scores


def test_short_clips_are_scored_without_fvd(tmp_path):
    path = tiny_study(tmp_path)
    study = Study(study=load_study(str(path), ['evaluation.protocol.metrics=[psnr, fvd]']), file=str(path),
                  root=str(tmp_path), train_script=Path('train.py'))
    convergence = study.evaluations[0]
    assert convergence.protocol['metrics'] == ['psnr']
    assert convergence.note == 'FVD skipped: 9-frame videos, I3D takes at least 10'


@pytest.mark.slow
def test_the_script_trains_scores_and_resumes(tmp_path):
    path = tiny_study(tmp_path, contenders=[{
        'label': 'FAR', 'experiment': str(REPO / 'options/convergence/contenders/far_moving_shapes_16px.yml'),
        'overrides': [*TINY, f'datasets.train.source.root={tmp_path}/data9']}])
    command = [sys.executable, '-m', 'scripts.convergence', '-opt', str(path), '--root', str(tmp_path / 'runs')]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    folder = tmp_path / 'runs' / 'tiny_study'
    points = json.loads((folder / 'points.json').read_text())['points']
    assert [(p['evaluation'], p['step']) for p in points] == [('convergence', 2), ('convergence', 4), ('2x', 4)]
    assert [bucket['frames'] for bucket in points[2]['metrics']['buckets']] == [[5, 8], [9, 12], [13, 16]]
    assert (folder / 'far_moving_shapes_16px' / 'checkpoints' / 'checkpoint-2').is_dir()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and 'training:' not in again.stdout and 'at step' not in again.stdout
