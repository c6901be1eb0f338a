"""Statistics over seeds. The primary interval is Student's t 95% CI of the mean."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and Student-t 95% confidence interval (n − 1 degrees of freedom, ddof = 1 SEM).

    With one seed the interval is undefined and returned as ``(mean, None, None)``.
    """
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half
