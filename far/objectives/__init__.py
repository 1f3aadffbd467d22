"""Training objectives."""
from far.objectives.clip_flow_matching import ClipFlowMatchingObjective
from far.objectives.flow_matching import (CLEAN_TIMESTEP, FlowMatching, FlowMatchingObjective, FlowMatchSchedule,
                                          NoisedFrames)
from far.objectives.next_block import NextBlockObjective

__all__ = ['CLEAN_TIMESTEP', 'ClipFlowMatchingObjective', 'FlowMatching', 'FlowMatchingObjective',
           'FlowMatchSchedule', 'NextBlockObjective', 'NoisedFrames']
