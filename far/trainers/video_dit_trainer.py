"""Training a video diffusion transformer (``far.models.VideoDiT``): clip-wise flow matching on autoencoder
latents, validated by prediction through its sampler."""
from far.objectives import ClipFlowMatchingObjective
from far.registry import TRAINERS
from far.trainers.far_trainer import FARTrainer


@TRAINERS.register()
class VideoDiTTrainer(FARTrainer):
    """:class:`FARTrainer` (the same data, latents, conditions and loss window) with
    :class:`ClipFlowMatchingObjective`: one noise level per clip, clean context as a leading run of frames."""

    model_families = ('VideoDiT',)

    def __init__(self, *, objective: ClipFlowMatchingObjective = ClipFlowMatchingObjective(), **options):
        super().__init__(objective=objective, **options)
