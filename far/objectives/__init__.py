"""Training objectives."""
from far.objectives.clip_flow_matching import ClipFlowMatchingObjective
from far.objectives.flow_matching import CLEAN_TIMESTEP, FlowMatchingObjective, FlowMatchSchedule, NoisedFrames

__all__ = ['CLEAN_TIMESTEP', 'ClipFlowMatchingObjective', 'FlowMatchingObjective', 'FlowMatchSchedule', 'NoisedFrames']
