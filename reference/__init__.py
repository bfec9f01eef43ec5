"""loadcheck's reference: what loading, quantizing and offloading a checkpoint mean.

Knows nothing of Hypothesis or pytest. Adapters import `reference.contract` only.
"""

__version__ = "0.1.0"
