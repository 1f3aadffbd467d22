"""Training objectives."""
from far.objectives.flow_matching import CLEAN_TIMESTEP, FlowMatchingObjective, FlowMatchSchedule, NoisedFrames

__all__ = ['CLEAN_TIMESTEP', 'FlowMatchingObjective', 'FlowMatchSchedule', 'NoisedFrames']
