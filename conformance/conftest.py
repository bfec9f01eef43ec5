"""In a checkout that is not installed (e.g. `PYTHONPATH=. pytest conformance`), load the
suite's plugin. Where loadcheck is installed, its `pytest11` entry point has the same name,
`conformance.plugin`, and pytest skips an already registered name: it is registered once."""

pytest_plugins = ["conformance.plugin"]
