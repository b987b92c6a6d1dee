"""Shared pytest set-up. The test gate (`make test`, CI) runs hypothesis derandomized, so a result does not
depend on which examples one run happened to draw: a failure reproduces on every machine. To hunt for new
counterexamples, set TQ_NB_EXPLORE=1 (`make test-explore`): hypothesis then draws fresh examples each run."""
import os
from hypothesis import settings

settings.register_profile('gate', derandomize=True, deadline=None, print_blob=True)
settings.register_profile('explore', derandomize=False, deadline=None, print_blob=True)
settings.load_profile('explore' if os.environ.get('TQ_NB_EXPLORE', '').lower() in ('1', 'true', 'yes') else 'gate')


# `make test` runs the tests on both cores (pytest-xdist, `-n 2 --dist loadgroup`). The notebooks are spread one by
# one; every other file stays whole on one worker, so its module-scoped fixtures (a trained run, the built docs
# site) are made once, and no two workers build `_docs/` at the same time.
def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        if item.path.name != 'test_notebooks.py': item.add_marker(pytest.mark.xdist_group(item.path.stem))
