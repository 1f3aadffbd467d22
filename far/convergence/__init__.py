"""Convergence studies: several experiments trained at equal compute on the same data, scored the same way at
regular checkpoints and rolled out beyond their training length (``scripts/convergence.py``)."""
from far.convergence.options import Contender, Run, StudyOptions, load_study
from far.convergence.study import Study, StudyError

__all__ = ['Contender', 'Run', 'Study', 'StudyError', 'StudyOptions', 'load_study']
