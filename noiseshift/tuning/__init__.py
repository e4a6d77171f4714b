"""`noiseshift tune`: at a budget of model evaluations per sample, which correction gives the
best samples? A race over `CANDIDATES` (`search.tune`), scored by FD in the
feature space `report` uses, with the shift read by an independent meter.

    from noiseshift.tuning import tune
    result = tune(model, 16, data, seeds=(0,))
    print(result.command()); result.rows
"""

from .candidates import CANDIDATES, Candidate, fitting
from .result import Row, TuneResult
from .search import tune

__all__ = ["CANDIDATES", "Candidate", "Row", "TuneResult", "fitting",
           "tune"]
