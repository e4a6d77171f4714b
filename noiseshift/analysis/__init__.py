"""Analysis of recorded and simulated runs: what the theory predicts and how good samples are.

One module per concept, imported by name (nothing is re-exported here):

- `theory`: the first-order proposition, its exact inversion, the alpha-aware second-moment
  prediction and the four routes from a trajectory to a predicted shift;
- `simulation`: reference trajectories on a given Brownian path, simulated model error and
  the experiments that score the routes against a calibrated meter;
- `statistics`: `Estimate` and the percentile bootstrap every number comes with;
- `classifier`: the small digits classifier whose features FD reads;
- `quality`: FD, precision/recall, the exact mixture metrics, `quality`, `quality_difference`.
"""
