"""``epochkit.schedules``: learning-rate schedules with warmup (see :mod:`epochkit.warmup.schedules`)."""

from epochkit.warmup.schedules import (
    preview,
    total_steps,
    warmup_constant,
    warmup_constant_factor,
    warmup_cosine,
    warmup_cosine_factor,
    warmup_factor,
    warmup_inverse_sqrt,
    warmup_inverse_sqrt_factor,
    warmup_linear,
    warmup_linear_factor,
    warmup_polynomial,
    warmup_polynomial_factor,
    warmup_stable_decay,
    warmup_stable_decay_factor,
)

__all__ = [
    "preview",
    "total_steps",
    "warmup_constant",
    "warmup_constant_factor",
    "warmup_cosine",
    "warmup_cosine_factor",
    "warmup_factor",
    "warmup_inverse_sqrt",
    "warmup_inverse_sqrt_factor",
    "warmup_linear",
    "warmup_linear_factor",
    "warmup_polynomial",
    "warmup_polynomial_factor",
    "warmup_stable_decay",
    "warmup_stable_decay_factor",
]
