"""Worker settings read from ``V1FABRIK_*`` environment variables, refused with a one-line error when malformed."""
import os


def seconds(name: str, default: float, positive: bool = False) -> float:
    """``$name`` as a number of seconds (``default`` when unset); negative, or zero with ``positive``, is refused."""
    value = os.environ.get(name, "")
    try:
        result = float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None
    if result < 0 or (positive and result == 0):
        raise ValueError(f"{name}={value!r} must be {'positive' if positive else 'zero or more'}")
    return result
