"""Why a metric has no value: it does not apply, or it failed on this embedding."""


class MetricNotApplicable(Exception):  # noqa: N818 - reads as what it is: a reason, not a fault
    """A metric that does not apply to these data; the message says why."""


class MetricNotComputable(Exception):  # noqa: N818
    """A metric that applies but failed numerically on this embedding (e.g. a diffusion map
    that does not converge on a degenerate geometry); the message says why. It counts as a
    failure: 0 in the aggregates."""
