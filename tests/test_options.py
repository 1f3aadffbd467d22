"""The experiment schema: the demo file validates, overrides apply, every bad key is named with its fix."""
import inspect
import re
from pathlib import Path

import pytest

import far  # noqa: F401  (fills the registries)
from far.experiment import EvaluationOptions, ExperimentOptions, building, load_experiment, require
from far.objectives import FlowMatchingObjective
from far.options import OptionError, load_yaml, yaml_parameters, to_dict
from far.trainers import FARTrainer, OptimizerOptions, ValidationOptions
from far.utils.experiment_dir import option_differences, resumable

DEMO = Path(__file__).resolve().parents[1] / 'options' / 'demo' / 'far_moving_shapes.yml'
MEMORY = DEMO.parents[1] / 'long_context' / 'far_long_maze_memory.yml'
ROOMS = DEMO.parents[1] / 'long_context' / 'far_maze_rooms.yml'
NBP = DEMO.parent / 'nbp_moving_shapes.yml'
NBP_TOKENIZER = DEMO.parent / 'nbp_tokenizer_moving_shapes.yml'
UCF_TEXT = ('model.condition_cfg={type: text, vocab_size: 32000, num_tokens: 8, '
            'class_text_ids: options/model_cfg/nbp/ucf101_class_text_ids.json}')


def demo_yaml(tmp_path, old: str = '', new: str = '') -> str:
    """The demo file with ``old`` replaced by ``new``, written under ``tmp_path``."""
    text = DEMO.read_text()
    assert old in text
    path = tmp_path / 'run.yml'
    path.write_text(text.replace(old, new, 1))
    return str(path)


def error(path: str, overrides=()) -> str:
    with pytest.raises(OptionError) as info:
        load_experiment(path, overrides)
    return str(info.value)


def test_demo_file_validates_into_option_groups():
    opt = load_experiment(str(DEMO))
    assert isinstance(opt, ExperimentOptions)
    assert isinstance(opt.test, EvaluationOptions) and opt.test.sampler['type'] == 'FARPipeline'
    trainer = opt.trainer
    assert trainer['type'] == 'FARTrainer'
    assert isinstance(trainer['optimizer'], OptimizerOptions)
    assert isinstance(trainer['objective'], FlowMatchingObjective)
    assert isinstance(trainer['validation'], ValidationOptions)
    assert set(opt.datasets) == {'train', 'val', 'test'}
    assert opt.test.protocol['type'] == 'MCVDProtocol'
    # the resolved options are plain YAML data again
    resolved = to_dict(opt)
    assert resolved['trainer']['objective']['clean_context_ratio'] == 0.5
    assert resolved['trainer']['optimizer']['betas'] == [0.9, 0.99]


def test_command_line_overrides():
    opt = load_experiment(str(DEMO), ['trainer.total_steps=20', 'model.num_layers=2', 'trainer.optimizer.lr=5e-4',
                                      'trainer.validation=null'])
    assert opt.trainer['total_steps'] == 20 and opt.model['num_layers'] == 2
    assert opt.trainer['optimizer'].lr == 5e-4 and opt.trainer['validation'] is None


@pytest.mark.parametrize('old, new, expected', [
    # unknown key in a dataclass group: file, key path, suggestion, allowed keys
    ('lr: 1.5e-3', 'lrr: 1.5e-3',
     r"run\.yml: trainer\.optimizer\.lrr: unknown key for OptimizerOptions \(did you mean 'lr'\?\); "
     r"allowed keys: betas, decayed_modules, eps, lr, weight_decay"),
    # unknown key in a registry block
    ('num_layers: 4', 'num_layer: 4',
     r"run\.yml: model\.num_layer: unknown key for model 'FAR' \(did you mean 'num_layers'\?\); allowed keys: "),
    # runtime objects are not YAML keys
    ('total_steps: 2400', 'accelerator: cpu',
     r"trainer\.accelerator: unknown key for trainer 'FARTrainer'"),
    # wrong type
    ('total_steps: 2400', 'total_steps: many', r"trainer\.total_steps: got 'many', expected an integer"),
    ('use_kv_cache: true\n    scheduler', 'use_kv_cache: 3\n    scheduler',
     r'test\.sampler\.use_kv_cache: got 3, expected true or false'),
    # unknown key in a sampler block (its options dataclass)
    ('    num_inference_steps: 40\n    guidance', '    num_inference_step: 40\n    guidance',
     r"test\.sampler\.num_inference_step: unknown key for pipeline 'FARPipeline' \(did you mean "
     r"'num_inference_steps'\?\)"),
    ("mixed_precision: 'no'", 'mixed_precision: fp32', r"mixed_precision: got 'fp32', allowed: 'no', 'fp16', 'bf16'"),
    # unknown registry entry
    ('type: FARTrainer', 'type: FARTrainr',
     r"trainer\.type: unknown trainer 'FARTrainr' \(did you mean 'FARTrainer'\?\)"),
    # missing required key
    ('  total_steps: 2400\n', '', r"trainer\.total_steps: missing required key for trainer 'FARTrainer'"),
    ('name: demo_far_moving_shapes\n', '', r'run\.yml: name: missing required key for ExperimentOptions'),
    # a key that names a dataset
    ('dataset: test ', 'dataset: tset ', r"test\.dataset: names dataset 'tset', which is not a key of `datasets` "
                                          r"\(keys: train, val, test\)"),
])
def test_bad_keys_are_named_with_what_is_allowed(tmp_path, old, new, expected):
    assert re.search(expected, error(demo_yaml(tmp_path, old, new)))


def test_bad_override_is_reported_like_a_bad_key(tmp_path):
    message = error(str(DEMO), ['trainer.objective.clean_context_ration=0.2'])
    assert "far_moving_shapes.yml: trainer.objective.clean_context_ration: unknown key for FlowMatchingObjective " \
           "(did you mean 'clean_context_ratio'?)" in message
    assert "must look like 'key.path=value'" in error(str(DEMO), ['trainer.total_steps'])


def test_missing_file_and_missing_sections(tmp_path):
    assert 'file not found' in error(str(tmp_path / 'absent.yml'))
    opt = load_experiment(str(DEMO), ['trainer=null', 'test=null'])
    with pytest.raises(OptionError, match=r'x\.yml: trainer: missing: train\.py needs it'):
        require(opt, 'x.yml', 'trainer', 'train.py')
    with pytest.raises(OptionError, match=r'x\.yml: test: missing: test\.py needs it'):
        require(opt, 'x.yml', 'test', 'test.py')
    no_train = load_experiment(demo_yaml(tmp_path, '  train: {type: MovingShapes', '  other: {type: MovingShapes'))
    with pytest.raises(OptionError, match=r'x\.yml: datasets\.train: missing: train\.py needs it'):
        require(no_train, 'x.yml', 'datasets.train', 'train.py')


def test_constructor_checks_name_the_block():
    opt = load_experiment(str(DEMO), ['model.axes_dims_rope=[8, 8, 8]'])
    with pytest.raises(OptionError, match=r'far_moving_shapes\.yml: model: FAR: axes_dims_rope \[8, 8, 8\] must sum '
                                          r'to attention_head_dim \(64\)'):
        with building(str(DEMO), 'model'):
            opt.build_model()


def test_trainer_options_are_the_whole_chain_of_signatures_and_annotated():
    """The validator checks YAML values against these annotations: each YAML key needs one."""
    params = yaml_parameters(FARTrainer)
    assert {'objective', 'validation', 'total_steps', 'optimizer', 'checkpoint'} <= set(params)
    assert not {'accelerator', 'model', 'autoencoder', 'datasets'} & set(params)  # built by train.py
    for name, param in params.items():
        assert param.annotation is not inspect.Parameter.empty, name
    with pytest.raises(TypeError):
        FARTrainer(None)  # keyword-only


def test_option_differences_name_the_changed_keys():
    old = {'trainer': {'total_steps': 10, 'optimizer': {'lr': 1e-3}}, 'seed': 0}
    new = {'trainer': {'total_steps': 20, 'optimizer': {'lr': 1e-3}}, 'seed': 0, 'pretrained': 'x'}
    assert [text for _, text in option_differences(old, new)] == ["pretrained: '<absent>' -> 'x'",
                                                                 'trainer.total_steps: 10 -> 20']
    assert option_differences(old, old) == []
    assert resumable('trainer.total_steps') and resumable('trainer.validation.sampler.num_inference_steps')
    assert not resumable('trainer.optimizer.lr') and not resumable('seed')


@pytest.mark.parametrize('file, overrides, expected', [
    (DEMO, ['model.condition_cfg={type: label, num_classes: 5}'],
     r'model\.condition_cfg: has 5 label classes, but datasets\.train \(MovingShapes\) has 9'),
    (DEMO, ['model.condition_cfg={type: action, num_action_classes: 4}'],
     r"model\.condition_cfg: .* the items of datasets\.train \(MovingShapes\) carry no 'action'"),
    (DEMO, ['test.protocol.unroll_length=20'],
     r'datasets\.test\.source\.num_frames: is 8, but test\.protocol needs clips of 22 frames'),
    (DEMO, ['trainer.validation.context_length=4', 'trainer.validation.unroll_length=5'],
     r'datasets\.val\.source\.num_frames: is 8, but trainer\.validation needs clips of 9 frames'),
    (DEMO, ['model.condition_cfg=null', 'trainer.validation.sampler.guidance_scale=1'],
     r'test\.sampler\.guidance_scale: is 1\.25, but model\.condition_cfg is null'),
    (DEMO, ['model.condition_cfg=null'],
     r'trainer\.validation\.sampler\.guidance_scale: is 1\.25, but model\.condition_cfg is null'),
    (DEMO, ['test.sampler.scheduler.num_train_timesteps=500'],
     r'test\.sampler\.scheduler\.num_train_timesteps: is 500, but trainer\.objective\.scheduler'),
    (MEMORY, ['datasets.test.source.window=4'],
     r'datasets\.test\.source\.window: is 4, but model\.short_term_ctx_winsize is 8'),
    # plain FAR sees every frame at full resolution and takes any revisit window (ROOMS: 2 with 48); FAR-Long does not
    (ROOMS, ['model.type=FAR_Long', 'model.context_patch_size=3'],
     r'datasets\.train\.source\.window: is 2, but model\.short_term_ctx_winsize is 48'),
    (MEMORY, ['test.protocol.sliding_window_baseline=48'],
     r'test\.protocol\.sliding_window_baseline: is 48 frames, but the protocol samples only 48'),
    (MEMORY, ['test.protocol.unroll_length=17'],
     r'datasets\.test\.source\.episode_length: is 48, but test\.protocol needs clips of 49'),
    # a tokenizer that compresses time by 4 encodes 1 + 4 m frames: training clips, context, whole videos
    (NBP, ['datasets.train.source.num_frames=8'],
     r'datasets\.train\.source\.num_frames: is 8 frames, but autoencoder NBPTokenizer '
     r'compresses time by 4 and encodes 1 \+ 4 m frames'),
    (NBP_TOKENIZER, ['datasets.val.source.num_frames=10'], r'datasets\.val\.source\.num_frames: is 10 frames'),
    (NBP, ['test.protocol.context_length=4'], r'test\.protocol\.context_length: gives a context of 4 frames'),
    (NBP, ['trainer.validation.unroll_length=3'],
     r'trainer\.validation\.unroll_length: makes \(with context_length\) videos of 8 frames'),
    (NBP, ['model.video_vocab_size=64000'],
     r'model\.video_vocab_size: is 64000, but the codebook of autoencoder\.fsq_levels \[8, 5, 5, 5\] has 1000 codes'),
    (NBP, ['datasets.test.source.resolution=16'],
     r'datasets\.test\.source\.resolution: is 16, but autoencoder\.image_size is 32'),
    (NBP, ['test.sampler={type: FARPipeline}'],
     r'test\.sampler\.type: FARPipeline samples FAR models, but model\.type is NBPTransformer; choose the sampler of '
     r'that model family: NBPPipeline'),
    (DEMO, ['test.sampler={type: NBPPipeline}'],
     r'test\.sampler\.type: NBPPipeline samples NBP models, but model\.type is FAR'),
    (NBP, ['autoencoder={type: IdentityAutoencoder}', 'trainer.validation=null', 'test=null'],
     r'autoencoder\.type: is IdentityAutoencoder \(family identity\), but trainer\.type NBPTrainer trains '
     r'NBP-tokenizer autoencoders'),
    (DEMO, ['autoencoder.type=NBPTokenizer'], r'autoencoder\.pixel_unshuffle: unknown key'),
    (NBP, ['model.type=FAR', 'model={type: FAR}', 'test=null', 'trainer.validation=null'],
     r'model\.type: is FAR \(family FAR\), but trainer\.type NBPTrainer trains NBP models'),
    # text conditions read dataset labels through their class table; FAR takes no text
    (NBP, [UCF_TEXT, 'model.hybrid=true'], r'model\.condition_cfg: has 101 label classes, but datasets\.train '
                                            r'\(MovingShapes\) has 9'),
    (NBP, ['model.condition_cfg={type: text, vocab_size: 30, num_tokens: 8}'],
     r"model\.condition_cfg: .* the items of datasets\.train \(MovingShapes\) carry no 'text'"),
    (DEMO, [UCF_TEXT], r'model\.condition_cfg: condition_cfg must be .* \(this model takes null, label, action\)'),
    (NBP, ['model.condition_cfg={type: text, vocab_size: 30, num_tokens: 8, class_text_ids: absent.json}'],
     r"model\.condition_cfg: condition_cfg\.class_text_ids 'absent\.json' does not exist"),
])
def test_settings_that_must_agree_across_blocks_are_checked_when_the_file_loads(file, overrides, expected):
    assert re.search(expected, error(str(file), overrides))


VIDEO_DIT = DEMO.parents[1] / 'convergence' / 'contenders' / 'video_dit_moving_shapes_16px.yml'
NBP_UCF = DEMO.parents[1] / 'train' / 'nbp' / 'NBP_base_ucf101_cond_res128_100K_bs256.yml'


@pytest.mark.parametrize('file, overrides, expected', [
    # a trainer of another model family: one line naming both keys, before any work
    (DEMO, ['model={type: NBP_base}', 'autoencoder={type: NBPTokenizer, image_size: 32}', 'trainer.validation=null',
            'test=null'], r'model\.type: is NBP_base \(family NBP\), but trainer\.type FARTrainer trains FAR models'),
    (NBP_UCF, ['trainer.type=FARTrainer'], r'model\.type: is NBP_base \(family NBP\), but trainer\.type FARTrainer'),
    (DEMO, ['autoencoder={type: NBPTokenizer, image_size: 32}', 'test=null', 'trainer.validation=null'],
     r'autoencoder\.type: is NBPTokenizer \(family NBP-tokenizer\), but trainer\.type FARTrainer trains DC-AE or KL '
     r'or identity autoencoders'),
    (DEMO, ['trainer.type=VideoDiTTrainer', 'trainer.objective={}'],
     r'model\.type: is FAR \(family FAR\), but trainer\.type VideoDiTTrainer trains VideoDiT models'),
    # a sampler of another model family
    (VIDEO_DIT, ['test.sampler={type: FARPipeline}'],
     r'test\.sampler\.type: FARPipeline samples FAR models, but model\.type is VideoDiT; choose the sampler of that '
     r'model family: VideoDiTPipeline'),
    (DEMO, ['test.sampler={type: VideoDiTPipeline}'],
     r'test\.sampler\.type: VideoDiTPipeline samples VideoDiT models, but model\.type is FAR'),
    (MEMORY, ['test.sampler={type: NBPPipeline}'], r'test\.sampler\.type: NBPPipeline samples NBP models'),
    # only the type overridden: the misfit is named, not the old sampler's settings the new one does not take
    (DEMO, ['test.sampler.type=NBPPipeline'], r'test\.sampler\.type: NBPPipeline samples NBP models, but model\.type '
                                              r'is FAR; choose the sampler of that model family: FARPipeline'),
    (VIDEO_DIT, ['trainer.validation.sampler.type=FARPipeline'],
     r'trainer\.validation\.sampler\.type: FARPipeline samples FAR models, but model\.type is VideoDiT'),
])
def test_a_trainer_or_sampler_of_another_family_fails_at_load(file, overrides, expected):
    assert re.search(expected, error(str(file), overrides))


@pytest.mark.parametrize('file', [DEMO, MEMORY, NBP, NBP_TOKENIZER, VIDEO_DIT, NBP_UCF])
def test_trainers_and_samplers_accept_their_own_families(file):
    """FAR and FAR-Long with FARTrainer/FARPipeline, VideoDiT with its own, NBP with its tokenizer, a tokenizer
    alone with the autoencoder trainer."""
    load_experiment(str(file))


def test_every_registered_class_declares_its_family_and_what_it_accepts():
    from far.registry import AUTOENCODERS, MODELS, PIPELINES, TRAINERS
    for registry in (MODELS, AUTOENCODERS):
        assert all(isinstance(registry.entry_class(name).family, str) for name in registry.keys())
    families = {registry.entry_class(name).family for registry in (MODELS, AUTOENCODERS) for name in registry.keys()}
    for registry in (TRAINERS, PIPELINES):
        for name in registry.keys():
            accepted = {*registry.get(name).model_families, *registry.get(name).autoencoder_families}
            assert accepted and accepted <= families, name


def test_the_ema_warms_up_in_new_configs_only():
    """Every shipped config with an EMA keeps the constant decay its numbers (paper, README) were made with."""
    assert yaml_parameters(FARTrainer)['ema_warmup'].default is True
    trainers = [load_yaml(str(file)).get('trainer') for file in sorted(DEMO.parents[1].rglob('*.yml'))]
    emas = [trainer for trainer in trainers if trainer and trainer.get('ema_decay') is not None]
    assert len(emas) == 33 and all(trainer['ema_warmup'] is False for trainer in emas)
