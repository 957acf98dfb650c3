"""Checks of config values that name the culprit, for functions called with database configs."""
import numbers


def require_positive_ints(**values) -> None:
    """Raise ValueError/TypeError unless every value (or every entry of a list value) is an int >= 1."""
    for name, value in values.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                raise TypeError(f"{name} must be a positive whole number, got {type(item).__name__} {item!r}")
            if item < 1:
                raise ValueError(f"{name} must be at least 1, got {item}")
