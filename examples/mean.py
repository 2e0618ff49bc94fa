def mean(values):
    """The average of values."""
    total = sum(values)
    return total / 
