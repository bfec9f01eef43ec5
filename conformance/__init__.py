"""The conformance suite: `pytest conformance --loader NAME`."""
