"""Guidance: wrappers that turn a denoiser into a guided denoiser.

Every wrapper is itself a denoiser (same call, same attributes; see docs/architecture.md), so
every sampler runs every guidance and wrappers compose:

- `ClassifierFreeGuidance` (classifier_free.py): CFG on the class axis and classifier-free
  NAG (Zhong et al., 2025) on the noise axis,
  ``v(x|t,c) + w_cfg [v(x|t,c) - v(x|t,0c)] + w_nag [v(x|t,c) - v(x|0t,c)]``, all branches in
  one batched forward pass; ``cf-read`` turns the NAG branch into a score at an estimator's
  reading t' of the state, ``cf-read-control`` reads the conditional output there.
- `EstimatorGradientNAG` (estimator.py): ``score(x|t) + w grad_x log p(t|x)`` from a
  noise-level estimator's posterior; works on any denoiser. `ReadingStepNAG`
  (``estimator-step``, the default): a damped Newton step on the estimator's reading, along
  the predicted noise; `ReadingLikelihoodNAG` (``estimator-reading``): the gradient of a
  Gaussian likelihood of the reading. ``cf-calibrated`` (in `ClassifierFreeGuidance`)
  converts the null-t branch at the calibrated reading, with the score -> velocity factor
  capped.
- `EpsScaling` (Ning et al., ICLR 2024) and `TimeShift` (Li et al., ICLR 2024) (peers.py).
- `DCW` (Yu et al., CVPR 2026; dcw.py): a differential correction of the state after each
  sampler step, per Haar band; it leaves the output alone and acts through the sampler's
  ``step_hook`` (`step_hook_of` finds it in a wrapper chain).
- `MODES` (modes.py): the one table of NAG modes (`ModeSpec`: wrapper, what it needs, its
  default interval and cap, what the scale means); `parse_mode` checks a name.
- `build_guidance` builds any combination from CLI-style options, reading `MODES`;
  `run_name` names the run (build.py).
- `Guided`, the shared constants and `GuidanceWarning` live in base.py.

Outputs are mixed and converted only through ``Schedule.convert`` (in float64). The probe of
whether a model trusts its t input is `noiseshift.analysis.probe`.
"""

from .base import (
    DEFAULT_CAP,
    FULL_INTERVAL,
    LOW_DIM,
    UNCAPPED_INTERVAL,
    GuidanceWarning,
    Guided,
    capped,
    velocity_gain,
)
from .build import (
    build_guidance,
    describe_estimator,
    low_dim_warning,
    run_name,
    step_hook_of,
)
from .classifier_free import NO_NULL_T, ClassifierFreeGuidance
from .dcw import DCW, DCW_FORMS, DEFAULT_DCW_FORM
from .estimator import (
    EstimatorGradientNAG,
    ReadingLikelihoodNAG,
    ReadingStepNAG,
    calibrated_t,
    grad_log_posterior,
    interpolate_log_posterior,
    read_t,
    reading_and_grad,
)
from .modes import (
    DEFAULT_INTERVAL,
    DEFAULT_NAG_MODE,
    MODES,
    NAG_MODES,
    ModeSpec,
    modes_help,
    parse_mode,
    scale_help,
)
from .peers import EpsScaling, TimeShift

__all__ = [
    "DCW", "DCW_FORMS", "DEFAULT_CAP", "DEFAULT_DCW_FORM", "DEFAULT_INTERVAL",
    "DEFAULT_NAG_MODE", "FULL_INTERVAL",
    "LOW_DIM", "MODES", "NAG_MODES", "NO_NULL_T", "ClassifierFreeGuidance", "EpsScaling",
    "EstimatorGradientNAG", "Guided", "GuidanceWarning", "ModeSpec", "ReadingLikelihoodNAG",
    "ReadingStepNAG", "TimeShift", "UNCAPPED_INTERVAL",
    "build_guidance", "calibrated_t", "capped", "describe_estimator", "grad_log_posterior",
    "interpolate_log_posterior", "low_dim_warning", "modes_help", "parse_mode", "read_t",
    "reading_and_grad", "run_name", "scale_help", "step_hook_of", "velocity_gain",
]
