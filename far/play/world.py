"""A trained model ready to play: its sampler over the experiment's weights, the held-out episodes a stream starts
from, and what the model is conditioned on (the actions a player sends, or nothing: it plays by itself)."""
from pathlib import Path
from typing import Optional

from torch.utils.data import default_collate

from far import run
from far.conditions import Conditions
from far.experiment import ExperimentOptions, require
from far.options import OptionError
from far.utils.distributed import make_accelerator


class World:
    """``sampler`` streams frames, each stream keeping ``max_frames`` (``None``: the stream's default); ``dataset``
    holds the held-out episodes whose first ``context_length`` frames (and their conditions) start a stream."""

    def __init__(self, *, sampler, dataset, context_length: int, weights: Path, max_frames: Optional[int] = None):
        self.sampler, self.dataset, self.context_length, self.weights = sampler, dataset, context_length, weights
        self.max_frames = max_frames

    @property
    def num_actions(self) -> int:
        """How many actions a player has (0: the model is not action-conditioned and plays by itself)."""
        condition = self.sampler.condition
        return condition.num_classes if condition is not None and condition.per_frame else 0

    @property
    def num_episodes(self) -> int:
        return len(self.dataset)

    def episode(self, index: int) -> dict:
        """Held-out episode ``index`` as a batch of one: ``'video'`` ``[1, T, 3, H, W]`` in [0, 1] and its fields."""
        if not 0 <= index < self.num_episodes:
            raise ValueError(f'episode {index} does not exist: the held-out set has {self.num_episodes} (0 to '
                             f'{self.num_episodes - 1})')
        batch = default_collate([self.dataset[index]])
        if batch['video'].shape[1] <= self.context_length:
            raise ValueError(f"episode {index} has {batch['video'].shape[1]} frames, no more than the "
                             f'{self.context_length} context frames a stream starts from')
        return batch

    def conditions(self, episode: dict) -> Conditions:
        """The conditions of the episode's context frames (its label or text, or its first actions)."""
        condition = self.sampler.condition
        return None if condition is None else condition.from_batch(episode, self.context_length)

    def open_stream(self, episode: dict, seed: int):
        """A stream continuing ``episode``'s first ``context_length`` frames, its noise drawn from ``seed``."""
        context = episode['video'][:, :self.context_length].to(self.sampler.transformer.device)
        return self.sampler.open_stream(context=context, conditions=self.conditions(episode), seed=seed,
                                        max_frames=self.max_frames)


def load_world(options: ExperimentOptions, file: str, *, root: str = 'experiments',
               context_length: Optional[int] = None, max_frames: Optional[int] = None) -> World:
    """The world of an experiment with a ``test`` section: its ``test.sampler`` over the weights ``test.checkpoint``
    names, starting from the ``test.dataset`` episodes' first ``context_length`` frames (by default
    ``test.protocol.context_length``), each stream keeping ``max_frames``. Raises OptionError naming the key at fault
    before any player's stream starts."""
    require(options, file, 'test', 'the play page (its sampler, held-out dataset and checkpoint)')
    require(options, file, 'model', 'the play page')
    context = options.test.protocol.get('context_length', 0) if context_length is None else context_length
    if context < 1:
        raise OptionError(file, 'test.protocol.context_length', f'is {context}: a stream starts from at least one '
                          'frame of a held-out episode; pass --context N (N >= 1)')
    source = run.weights_source(options, file, Path(root) / options.name)
    sampler, weights, dataset = run.build_sampling(options, file, source, make_accelerator(options.mixed_precision))
    world = World(sampler=sampler, dataset=dataset, context_length=context, weights=weights, max_frames=max_frames)
    try:  # a first stream, so that what cannot play stops the command before it serves
        episode = world.episode(0)
    except ValueError as error:
        raise OptionError(file, f'datasets.{options.test.dataset}', str(error)) from None
    try:
        world.open_stream(episode, seed=0)
    except (NotImplementedError, ValueError) as error:
        raise OptionError(file, 'test.sampler', str(error)) from None
    return world
